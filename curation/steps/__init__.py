"""The datatrove steps this project adds or adapts; the stage commands in `curation` assemble them."""
