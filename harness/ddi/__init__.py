"""The guest's DDIs as typed Python calls, one module per NT family (pool, mdl, syspte, ...).

`harness.guest.MemoryManager` combines them: `vm.mm.MmGetPhysicalAddress(va)`. Each family is a
mixin over `DdiFamily`, whose `_call` sends one agent request. A guest stop raises BugCheck, an agent
refusal AgentError; return values are NT's (a PVOID or PHYSICAL_ADDRESS as an int, 0 for NULL; an
NTSTATUS as an int; a BOOLEAN as a bool).
"""
