/* The ACPI tables the kernel reads: the MADT's list of processors, at boot. */
#pragma once
#include <stdint.h>

/*
 * The APIC IDs of the enabled processors the MADT lists, in its order, found from the RSDP at
 * rsdp_pa (the PVH start_info's rsdp_paddr). Reads through the boot stub's identity map; returns 0,
 * with *problem saying why, when there is no usable MADT within reach.
 */
unsigned acpi_processor_apic_ids(uint64_t rsdp_pa, uint32_t *apic_ids, unsigned max, const char **problem);
