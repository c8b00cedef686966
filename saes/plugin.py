"""Registers the saes package with interp (entry point `interp.plugins`): the `interp sae` command
group and the atlas section; interp itself never imports saes."""
from saes import report


def register(registry) -> None:
    registry.group("sae", report.app)
    registry.atlas_section("sae", report.atlas_section)
