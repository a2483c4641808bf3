"""The artefact contract: the one owner of every fact the stages share about files on disk.

Training writes run folders, the compiler reads them and writes export folders, the server and the
Hub tools read those. Every file name, state-dict key pattern, rule (which layers are kept, which
recipes use rationals), the manifest format and the table of supported backbone families live here,
and every stage imports them from here instead of restating them.

Torch-free by design (standard library and numpy only): the server imports it without torch or
transformers installed; ``tests/test_contract.py`` checks that.

* :mod:`.layout`   — file names of run, export and store folders; state-dict key patterns.
* :mod:`.rules`    — the switch / kept-layer rule, "does this recipe use rationals", and friends.
* :mod:`.manifest` — ``aa_export.json``: read, validate, write; the one version rule.
* :mod:`.families` — one row per supported backbone family with the facts every stage needs.
"""
