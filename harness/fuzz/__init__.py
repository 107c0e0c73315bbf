"""Fuzzing and soak commands (docs/fuzzing.md): `mmhil fuzz frames`, `mmhil fuzz ddi`, `mmhil soak`.

- `frames` (harness.fuzz.frames, .frames_run): random and mutated agent frames on COM2 and in the
  mailbox, each answer checked against what docs/agent-protocol.md says it must be.
- `ddi` (harness.fuzz.model, .ddi_run): random well-formed DDI call sequences, each outcome checked
  against the host's model of what the call may do, each mapping verified three ways.
- `soak` (harness.fuzz.soak): allocate/free and map/unmap of every family, with leak counts.

Every command is seeded and replays exactly from its seed; findings go to a JSON-lines file beside
the VMs' logs.
"""
