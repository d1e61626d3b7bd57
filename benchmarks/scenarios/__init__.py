"""The scenarios and their figures, one module per thing measured: `passthrough`,
`codecs`, `multipart`, `registry`, `small_files`, `memory`, `first_byte`, `auth`. Each
declares `SCENARIOS` (`scenario.Scenario`) and `FIGURES` (`figure.Figure`);
`benchmarks/catalogue.py` collects them, `benchmarks/targets.py` holds the targets."""
