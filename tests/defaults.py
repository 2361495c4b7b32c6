"""Constants of the slow tests on the real default model (shared by conftest and the tests)."""

# Six of SmolLM2-135M's 30 blocks, removed as given (no search) for the export and interop tests.
DEFAULT_PRUNED_BLOCKS = [20, 24, 25, 26, 22, 21]
