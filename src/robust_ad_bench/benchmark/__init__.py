"""Everything that ties methods, attacks and datasets together: registry, runner, store, outputs."""
