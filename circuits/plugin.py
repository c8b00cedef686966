"""Registers the circuits package's commands and atlas sections with interp (entry point
`interp.plugins`), so interp itself never imports circuits."""
from circuits import taxonomy
from circuits.reports import compare, dormant, heads, ioi, retrieval, safety, sinks


def register(registry) -> None:
    registry.command("heads", heads.heads_command)
    registry.command("sinks", sinks.sinks_command)
    registry.command("dormant", dormant.dormant_command)
    registry.command("compare", compare.compare_command)
    registry.command("ioi", ioi.ioi_command)
    registry.command("retrieval", retrieval.retrieval_command)
    registry.command("safety", safety.safety_command)
    registry.atlas_section("head_types", heads.atlas_section)
    registry.atlas_section("sinks", sinks.atlas_section)
    registry.atlas_section("active_dormant", dormant.atlas_section)
    registry.atlas_section("ioi", ioi.atlas_section)
    registry.atlas_section("retrieval", retrieval.atlas_section)
    registry.atlas_section("safety", safety.atlas_section)
    taxonomy.register(registry)  # head types and labels for the head atlas
