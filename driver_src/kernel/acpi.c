/*
 * ACPI: RSDP -> XSDT (or RSDT) -> MADT ("APIC"), whose Processor Local APIC entries (type 0) name
 * every processor. Both firmwares mmhil boots under give the RSDP in the PVH start_info: qboot
 * (microvm) and SeaBIOS (pc, q35). Every table's checksum is checked before it is believed.
 */
#include "acpi.h"
#include "bootinfo.h"
#include "console.h"
#include "kstring.h"

#define RSDP_V1_LENGTH 20
#define RSDP_V2_LENGTH 36
#define SDT_HEADER_LENGTH 36
#define MADT_ENTRIES_OFFSET 44
#define MADT_LOCAL_APIC 0
#define LOCAL_APIC_ENABLED 0x1

struct PACKED rsdp {
	char signature[8];
	uint8_t checksum;
	char oem_id[6];
	uint8_t revision;
	uint32_t rsdt_address;
	uint32_t length;
	uint64_t xsdt_address;
	uint8_t extended_checksum;
	uint8_t reserved[3];
};

struct PACKED sdt_header {
	char signature[4];
	uint32_t length;
	uint8_t revision, checksum;
	char oem_id[6], oem_table_id[8];
	uint32_t oem_revision, creator_id, creator_revision;
};

struct PACKED madt_local_apic {
	uint8_t type, length, processor_uid, apic_id;
	uint32_t flags;
};

static bool sums_to_zero(const void *data, uint64_t length)
{
	uint8_t sum = 0;
	for (uint64_t i = 0; i < length; i++)
		sum += ((const uint8_t *)data)[i];
	return sum == 0;
}

/* The table at pa when it is in reach, whole, with a valid checksum; else 0. */
static const struct sdt_header *table_at(uint64_t pa)
{
	const struct sdt_header *h = boot_physical(pa, SDT_HEADER_LENGTH);
	if (!h || h->length < SDT_HEADER_LENGTH || !boot_physical(pa, h->length) || !sums_to_zero(h, h->length))
		return 0;
	return h;
}

static const struct sdt_header *find_madt(const struct rsdp *r)
{
	bool extended = r->revision >= 2 && r->xsdt_address;
	const struct sdt_header *root = table_at(extended ? r->xsdt_address : r->rsdt_address);
	if (!root)
		return 0;
	unsigned width = extended ? 8 : 4;
	const uint8_t *entries = (const uint8_t *)root + SDT_HEADER_LENGTH;
	for (uint64_t offset = 0; offset + width <= root->length - SDT_HEADER_LENGTH; offset += width) {
		uint64_t pa = 0;
		memcpy(&pa, entries + offset, width);
		const struct sdt_header *t = table_at(pa);
		if (t && !memcmp(t->signature, "APIC", 4))
			return t;
	}
	return 0;
}

/* Fills *problem with why no processor list was found (smp_report prints it), and returns 0. */
static unsigned no_madt(const char **problem, const char *why)
{
	*problem = why;
	return 0;
}

unsigned acpi_processor_apic_ids(uint64_t rsdp_pa, uint32_t *apic_ids, unsigned max, const char **problem)
{
	const struct rsdp *r = rsdp_pa ? boot_physical(rsdp_pa, RSDP_V2_LENGTH) : 0;
	if (!r)
		return no_madt(problem, rsdp_pa ? "the RSDP lies beyond the first GiB" : "the firmware gave no RSDP");
	if (memcmp(r->signature, "RSD PTR ", 8) || !sums_to_zero(r, RSDP_V1_LENGTH) ||
	    (r->revision >= 2 && !sums_to_zero(r, RSDP_V2_LENGTH)))
		return no_madt(problem, "the RSDP is not valid");
	const struct sdt_header *madt = find_madt(r);
	if (!madt)
		return no_madt(problem, "no valid MADT within the first GiB");
	unsigned count = 0;
	const uint8_t *entry = (const uint8_t *)madt + MADT_ENTRIES_OFFSET;
	const uint8_t *end = (const uint8_t *)madt + madt->length;
	while (entry + 2 <= end && entry[1] >= 2 && entry + entry[1] <= end) {
		const struct madt_local_apic *lapic = (const void *)entry;
		if (lapic->type == MADT_LOCAL_APIC && lapic->length >= sizeof(*lapic) && (lapic->flags & LOCAL_APIC_ENABLED)) {
			if (count == max) {
				kprintf("mmhil: smp: the MADT lists more than %u processors; the rest stay off\n", max);
				break;
			}
			apic_ids[count++] = lapic->apic_id;
		}
		entry += entry[1];
	}
	return count;
}
