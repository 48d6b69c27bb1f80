"""Image-classification pipeline: `stages/` (the DVC stage commands) and `core/` (the work); the
other commands live in the packages pipeline_tools and pipeline_team."""
