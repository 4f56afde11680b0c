"""framescale's kopf operator: sizes the accelerator node group from the SQS backlog and
keeps busy nodes safe from scale-in. See ``operator/README.md``."""
