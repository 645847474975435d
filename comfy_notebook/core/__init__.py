"""Pure core: protocol logic, lock state machine, pool choice and workflows. No sockets, no threads, no clocks
of its own (time is injected), so every rule here is unit-tested in milliseconds."""
