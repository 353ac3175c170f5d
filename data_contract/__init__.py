"""The files curation writes and training reads, described once.

`curation` writes and `train` reads everything under `paths.data_root`; neither imports the other,
so this package is where the two agree (and where tests build data in the same format):

    curated/<source>/*.jsonl.gz, stats.json, manifest.json     kept documents (datatrove JSONL)
    removed/<source>/<step>/*.jsonl.gz                          what each step removed, as it entered
    report/curation.md, funnel.png                              the run report
    quality_classifier/                                         the classifier and its manifest
    tokenizer/spm.model, manifest.json                          the trained tokenizer, or
    tokenizer/vocab.json, merges.txt, tokenizer.json, manifest.json   GPT-2's released byte-level BPE
    tokens/<source>/*.ds, *.ds.index, val/, manifest.json       token files (datatrove's format)
    mix/<mixture>/plan_source.npy, plan_sample.npy, mixture.json, manifest.json   the training order
    work/<source>/<stage>/, work/logs/<stage>[/<source>]/       intermediate documents, datatrove logs

One submodule per concern; import the name from the submodule that holds it (this file exports nothing):

    data_contract.layout           DataLayout: every path above under one data root
    data_contract.refusal          Refusal: every refusal of bad input, whose message is the one line the user sees
    data_contract.atomic_files     write_atomic, replace_folder, staging_folder, write_json, read_json,
                                   require_keys, sha256_file: every file is written atomically
    data_contract.lock             hold_lock: one process at a time on a data root or run folder
    data_contract.manifest         MANIFEST, write_manifest, code_version: the one `manifest.json` schema
                                   every output folder carries
    data_contract.token_files      token files (datatrove's format): dtype, per-file entries, the checked load
    data_contract.mixture_spec     the mixture plan: `mixture.json` and the plan arrays' names
    data_contract.tokenizer_files  the tokenizer's files in a folder, their names and the tokenizer's identity

(Fetching GPT-2's released tokenizer files is curation's job: `curation.assets.ensure_gpt2_bpe`.)
Only the standard library and numpy are imported at module level (`byte_level_bpe` imports
`tokenizers` when called), so the checks before training stay light.
"""
