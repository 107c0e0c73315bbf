/* The agent: serves docs/agent-protocol.md on COM2. */
#pragma once
#include "bugcheck.h"
#include "compiler.h"

void agent_init(void);
/* Sends !hello, then answers requests forever. */
NORETURN void agent_run(void);
void agent_send_bugcheck(const struct bugcheck *record);
/* Ends a frame cut short, so the next frame starts on a line of its own. */
void agent_abandon_frame(void);
