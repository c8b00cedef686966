"""Rendering of the circuits analyses: each module turns one analysis' typed result into its CLI command
(typer), its report section and its atlas section; the analyses themselves live in circuits/."""
