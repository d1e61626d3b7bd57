"""The scenarios, one module per thing measured: `passthrough`, `codecs`, `multipart`,
`registry`, `small_files`, `memory`, `first_byte`, `auth`. Each declares `SCENARIOS`
(`scenario.Scenario`); `benchmarks/catalogue.py` collects them."""
