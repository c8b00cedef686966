"""Extension points: analyses outside `interp/` add CLI commands and atlas sections here.

A plugin is an entry point in the group `interp.plugins` naming a function `register(registry)`.
This keeps the dependency direction one way: `interp` never imports `circuits` or `saes`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

# An atlas section: (model, context) -> (title, html_text, figures, tables, json_body)
AtlasSection = Callable[[Any, dict], dict]


@dataclass
class Registry:
    commands: list[tuple[str, Callable]] = field(default_factory=list)
    atlas_sections: list[tuple[str, AtlasSection]] = field(default_factory=list)
    groups: list[tuple[str, Any]] = field(default_factory=list)
    taxonomies: list[Any] = field(default_factory=list)
    head_labellers: list[tuple[str, Callable]] = field(default_factory=list)

    def command(self, name: str, fn: Callable) -> None:
        self.commands.append((name, fn))

    def group(self, name: str, app: Any) -> None:
        """A command with subcommands (`interp NAME SUB ...`), given as a `typer.Typer`."""
        self.groups.append((name, app))

    def atlas_section(self, name: str, fn: AtlasSection) -> None:
        self.atlas_sections.append((name, fn))

    def taxonomy(self, taxonomy: Any) -> None:
        """A head type the atlas reads off a score (`interp.head_atlas.Taxonomy`)."""
        self.taxonomies.append(taxonomy)

    def head_labeller(self, section: str, fn: Callable) -> None:
        """Labels an atlas section gives heads directly: fn(section_json) -> list[HeadLabel]."""
        self.head_labellers.append((section, fn))


def load_plugins() -> Registry:
    registry = Registry()
    for ep in entry_points(group="interp.plugins"):
        ep.load()(registry)
    return registry
