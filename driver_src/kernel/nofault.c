#include "nofault.h"

extern const struct exception_fixup __ex_table_start[], __ex_table_end[];

uint64_t exception_fixup_for(uint64_t rip)
{
	for (const struct exception_fixup *f = __ex_table_start; f < __ex_table_end; f++)
		if (f->fault_rip == rip)
			return f->resume_rip;
	return 0;
}
