"""Registers the circuits package's commands and atlas sections with interp (entry point
`interp.plugins`), so interp itself never imports circuits."""
from circuits import sinks_report


def register(registry) -> None:
    registry.command("sinks", sinks_report.sinks_command)
    registry.atlas_section("sinks", sinks_report.atlas_section)
