/* The agent: serves docs/agent-protocol.md on COM2. */
#pragma once
#include <stdint.h>
#include "bugcheck.h"
#include "compiler.h"

void agent_init(void);
/* Sends !hello: in the mailbox (with its doorbell) when the host asked for it there, else on COM2. */
void agent_say_hello(void);
/* Answers requests forever. */
NORETURN void agent_serve(void);
/* TSC ticks without work after which the agent halts (the host may ask for fewer: the mailbox). */
uint64_t agent_quiet_ticks(void);
void agent_send_bugcheck(const struct bugcheck *record);
/* Ends a frame cut short, so the next frame starts on a line of its own. */
void agent_abandon_frame(void);
