"""MkDocs hook: publish the repository files the pages link to (results, benchmark and experiment notes) with the site.

A page links them as on GitHub, relative to docs/ (`../results/bsds-losses/samples.png`), so the same link works in
both places. The files keep that `../` source path, which MkDocs resolves links against, and are written under
`repo/` in the site (`repo/results/bsds-losses/samples.png`); Markdown files among them become pages.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files, InclusionLevel

REPO_FILES = ("results/**/*", "benchmarks/README.md", "experiments/README.md")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add every file matched by REPO_FILES (paths relative to the repository root, the folder of mkdocs.yml)."""
    root = Path(config.config_file_path).parent
    for pattern in REPO_FILES:
        for path in sorted(p for p in root.glob(pattern) if p.is_file()):
            repo_path = path.relative_to(root).as_posix()
            placed = File(f"repo/{repo_path}", src_dir=None, dest_dir=config.site_dir, use_directory_urls=config.use_directory_urls)
            files.append(
                File(
                    f"../{repo_path}",
                    src_dir=config.docs_dir,
                    dest_dir=config.site_dir,
                    use_directory_urls=config.use_directory_urls,
                    dest_uri=placed.dest_uri,
                    inclusion=InclusionLevel.NOT_IN_NAV,  # published and linkable, in the nav only where mkdocs.yml puts them
                )
            )
    return files
