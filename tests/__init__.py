"""dnsd's tests; ``tests.fakes`` holds the test doubles (also used by bench/)."""
