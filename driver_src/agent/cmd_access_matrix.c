/* The page-permission probe on the agent channel (docs/access-matrix.md): set up its address space,
 * run batches of cases, release it. */
#include "access_probe.h"
#include "cpu.h"
#include "pagetable.h"
#include "protocol.h"

#define BATCH_BYTES_MAX (REQUEST_MAX / 2) /* a bytes value of one request, hex-decoded */

static uint8_t batch[BATCH_BYTES_MAX];
static uint8_t results[ACCESS_BATCH_MAX * ACCESS_RESULT_BYTES];

static void refused(const struct request *r, const struct access_probe_refusal *refusal)
{
	if (refusal->case_index >= 0)
		frame_error(r->id, ERROR_BAD_ARGUMENT, "case %d: %s (0x%lx)", refusal->case_index, refusal->what,
			    refusal->value);
	else
		frame_error(r->id, ERROR_BAD_ARGUMENT, "%s (0x%lx)", refusal->what, refusal->value);
}

static void setup(const struct request *r)
{
	struct access_probe_info info;
	struct access_probe_refusal refusal;
	if (!access_probe_setup(&info, &refusal)) {
		refused(r, &refusal);
		return;
	}
	uint8_t slots[ACCESS_BATCH_MAX * 2];
	for (unsigned i = 0; i < info.slot_count; i++) {
		slots[2 * i] = (uint8_t)info.slots[i];
		slots[2 * i + 1] = (uint8_t)(info.slots[i] >> 8);
	}
	frame_open_response(r->id);
	frame_decimal("levels", paging_levels);
	frame_hex("root", info.root_pa);
	frame_hex("tables", info.tables_pa);
	frame_hex("code", info.code_pa);
	frame_hex("data", info.data_pa);
	frame_bytes("slots", slots, 2 * info.slot_count);
	frame_decimal("maxphyaddr", info.maxphyaddr);
	frame_boolean("nx", cpu.nx);
	frame_boolean("smep", cpu.smep);
	frame_boolean("smap", cpu.smap);
	frame_boolean("pdpe1gb", cpu.pdpe1gb);
	frame_hex("ring0_read", info.ring0_read_rip);
	frame_hex("ring0_write", info.ring0_write_rip);
	frame_hex("ring3_read", info.ring3_read_rip);
	frame_hex("ring3_write", info.ring3_write_rip);
	frame_decimal("frames", info.frames);
	frame_close();
}

static void run_batch(const struct request *r)
{
	const struct value *cases = &r->values[0];
	size_t length = cases->length / 2;
	if (length > sizeof(batch)) { /* cannot happen within REQUEST_MAX; says so if it ever grows */
		frame_error(r->id, ERROR_BAD_ARGUMENT, "a batch is at most %zu bytes", sizeof(batch));
		return;
	}
	bytes_decode(cases, batch);
	unsigned count;
	struct access_probe_refusal refusal;
	if (!access_probe_run(batch, length, results, &count, &refusal)) {
		refused(r, &refusal);
		return;
	}
	frame_open_response(r->id);
	frame_decimal("count", count);
	frame_bytes("results", results, (size_t)count * ACCESS_RESULT_BYTES);
	frame_close();
}

static void release(const struct request *r)
{
	access_probe_release();
	frame_open_response(r->id);
	frame_close();
}

static void report_outstanding(void)
{
	frame_decimal("access_probe_frames", access_probe_frames());
}
OUTSTANDING_REPORTER(report_outstanding);

AGENT_COMMAND("access_probe_setup", "", "no values", setup);
AGENT_COMMAND("access_probe_batch", "b", "<cases:bytes>", run_batch);
AGENT_COMMAND("access_probe_release", "", "no values", release);
