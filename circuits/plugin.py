"""Registers the circuits package's commands and atlas sections with interp (entry point
`interp.plugins`), so interp itself never imports circuits."""
from circuits import (
    compare,
    dormant_report,
    heads_report,
    ioi_report,
    retrieval_report,
    safety_report,
    sinks_report,
    taxonomy,
)


def register(registry) -> None:
    registry.command("heads", heads_report.heads_command)
    registry.command("sinks", sinks_report.sinks_command)
    registry.command("dormant", dormant_report.dormant_command)
    registry.command("compare", compare.compare_command)
    registry.command("ioi", ioi_report.ioi_command)
    registry.command("retrieval", retrieval_report.retrieval_command)
    registry.command("safety", safety_report.safety_command)
    registry.atlas_section("head_types", heads_report.atlas_section)
    registry.atlas_section("sinks", sinks_report.atlas_section)
    registry.atlas_section("active_dormant", dormant_report.atlas_section)
    registry.atlas_section("ioi", ioi_report.atlas_section)
    registry.atlas_section("retrieval", retrieval_report.atlas_section)
    registry.atlas_section("safety", safety_report.atlas_section)
    taxonomy.register(registry)  # head types and labels for the head atlas
