"""Everything that talks to Ray: one connection policy, the Ray Data graph, evaluation tasks, Ray Train wiring."""
