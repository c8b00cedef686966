"""Registers the circuits package's commands and atlas sections with interp (entry point
`interp.plugins`), so interp itself never imports circuits."""
from circuits import compare, dormant_report, heads, heads_report, sinks_report


def register(registry) -> None:
    registry.command("heads", heads_report.heads_command)
    registry.command("sinks", sinks_report.sinks_command)
    registry.command("dormant", dormant_report.dormant_command)
    registry.command("compare", compare.compare_command)
    registry.atlas_section("head_types", heads.atlas_section)
    registry.atlas_section("sinks", sinks_report.atlas_section)
    registry.atlas_section("active_dormant", dormant_report.atlas_section)
