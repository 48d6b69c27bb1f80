"""`python -m pipeline plots-template`: the page `dvc plots show` fills, with Vega bundled in, so
plots draw offline.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so without the network four of
the six plots stay blank without a word. The set-up command (`make setup`) runs this once: it takes
the three libraries' published builds from the npm registry (`npm pack`, pinned versions) and writes
`.dvc/plots-offline.html`, and names it as DVC's `plots.html_template` in `.dvc/config.local` (this
clone's own settings): a clone set up without it (`pip install -r requirements.txt`) keeps DVC's
default page, which draws with the network.
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

import click

from pipeline.cli import reports_errors
from pipeline.core import atomic
from pipeline.core.errors import PipelineError
from pipeline.core.repo import executable

# The versions DVC's own page uses are older; these are the newest of the same majors (Vega-Lite 5
# specs).
PACKAGES = {
    "vega@5.33.1": "vega.min.js",
    "vega-lite@5.23.0": "vega-lite.min.js",
    "vega-embed@6.29.0": "vega-embed.min.js",
}
TEMPLATE = Path(".dvc/plots-offline.html")

PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>DVC plots</title>
  {refresh_tag}
  <!-- {versions}, bundled by `python -m pipeline plots-template`: no network needed. -->
  {libraries}
  <script>
    // SVG rather than canvas: the marks are elements a test (or a person's inspector) can count.
    const embedWithCanvas = vegaEmbed;
    window.vegaEmbed = (el, spec, opts) =>
      embedWithCanvas(el, spec, Object.assign({{renderer: "svg"}}, opts));
  </script>
  <style>table {{ border-spacing: 15px; }}</style>
</head>
<body>
  {{plot_divs}}
</body>
</html>
"""


def build(tarballs: dict[str, Path]) -> str:
    """The page, with each package's minified build inlined (any `</script>` inside escaped)."""
    scripts = []
    for package, build_file in PACKAGES.items():
        with tarfile.open(tarballs[package]) as tar:
            member = tar.extractfile(f"package/build/{build_file}")
            if member is None:
                raise PipelineError(f"{tarballs[package]}: no build/{build_file} in the package")
            code = member.read().decode("utf-8").replace("</script", "<\\/script")
        scripts.append(f"<script>/* {package} */\n{code}\n</script>")
    page = PAGE.format(
        refresh_tag="{refresh_tag}", versions=", ".join(PACKAGES), libraries="\n  ".join(scripts)
    )
    return page


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=TEMPLATE, show_default=True)
@reports_errors
def main(out: Path) -> None:
    """Fetch the pinned Vega builds with npm and write DVC's offline plots page."""
    npm, dvc = executable("npm"), executable("dvc")  # both found before the download
    with tempfile.TemporaryDirectory(prefix="vega-") as tmp:
        proc = subprocess.run(
            [npm, "pack", "--silent", "--pack-destination", tmp, *PACKAGES],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise PipelineError(
                f"npm pack {' '.join(PACKAGES)}: "
                f"{(proc.stderr.strip().splitlines() or ['failed'])[-1]}"
            )
        tarballs = {
            package: Path(tmp) / (package.replace("@", "-") + ".tgz") for package in PACKAGES
        }
        atomic.write_text(out, build(tarballs))
    # The path is relative to .dvc/, where DVC looks for templates.
    proc = subprocess.run(
        [dvc, "config", "--local", "plots.html_template", out.name],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise PipelineError(
            "dvc config --local plots.html_template: "
            f"{(proc.stderr.strip().splitlines() or ['failed'])[-1]}"
        )
    click.echo(
        f"wrote {out} ({out.stat().st_size // 1024} KiB: {', '.join(PACKAGES)}), named in "
        ".dvc/config.local"
    )


if __name__ == "__main__":
    main()
