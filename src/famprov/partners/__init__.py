"""Partners: who may grant licenses, and how their calls are authenticated."""
