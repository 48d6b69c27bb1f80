"""Image-classification pipeline: `stages/` (the DVC stage commands), `core/` (the work), `tools/`
(other commands)."""
