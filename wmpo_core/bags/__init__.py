"""Episode bags: writing (writer.py), reading (reader.py), health and repair (verify.py),
the sidecar (metadata.py) and the recorder's core (recorder.py). Layout: docs/data.md."""
