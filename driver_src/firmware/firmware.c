/*
 * The mmhil firmware: a 64 KiB ROM for -M microvm that does only what the kernel's PVH entry
 * needs. QEMU has already loaded the kernel's ELF segments into RAM (-kernel with a PVH note); this
 * reads the rest from QEMU's fw_cfg device: the entry point, the command line, the e820 map and
 * the ACPI tables, which fw_cfg's linker/loader script places and patches. It builds struct
 * hvm_start_info from them in low RAM (low_memory.h) and jumps to the kernel with EBX pointing at
 * it. Under TCG a boot pays for each guest instruction the first time it runs (its translation):
 * qboot's general-purpose code made the firmware's share of a boot ~1.3 ms, this ~0.75 ms
 * (about 630 instructions; `mmhil bench boot --phases` counts them).
 *
 * Anything it cannot do stops the VM: one line on COM1 naming what is missing, then
 * isa-debug-exit with status 65, which the harness reports with the console's tail.
 */
#include <stddef.h>
#include <stdint.h>
#include "fw_cfg.h"
#include "low_memory.h"
#include "pvh_start_info.h"
#include "uart.h"
#include "x86.h"

#define LOADER_ALLOCATIONS_MAX 16
#define MEMMAP_ENTRIES_MAX                                                           \
	((FIRMWARE_CMDLINE_PA - FIRMWARE_START_INFO_PA - sizeof(struct hvm_start_info)) / \
	 sizeof(struct hvm_memmap_table_entry))

NORETURN void firmware_main(void);

static void console_write(const char *text)
{
	for (; *text; text++)
		uart_put(COM1_PORT, (uint8_t)*text);
}

static void console_hex(uint32_t value)
{
	char digits[11] = "0x";
	for (int i = 0; i < 8; i++)
		digits[2 + i] = "0123456789abcdef"[(value >> (28 - 4 * i)) & 0xF];
	digits[10] = 0;
	console_write(digits);
}

/* `what` names the problem; a `detail` introduces `value`, when one is worth showing. */
static NORETURN void stop(const char *what, const char *detail, uint32_t value)
{
	console_write("mmhil firmware: ");
	console_write(what);
	if (detail) {
		console_write(detail);
		console_hex(value);
	}
	console_write("\n");
	outl(DEBUG_EXIT_PORT, DEBUG_EXIT_FIRMWARE);
	halt_forever(); /* only without isa-debug-exit */
}

static int name_is(const char *name, const char *wanted)
{
	for (size_t i = 0; i < FW_CFG_FILE_NAME_MAX; i++) {
		if (name[i] != wanted[i])
			return 0;
		if (!name[i])
			return 1;
	}
	return 0;
}

/* -- fw_cfg ----------------------------------------------------------------------------------- */

/* One DMA transfer; QEMU completes it inside the port write. */
static void fw_cfg_dma(uint32_t control, void *buffer, uint32_t length)
{
	volatile struct fw_cfg_dma request = {
		.control = __builtin_bswap32(control),
		.length = __builtin_bswap32(length),
		.address = __builtin_bswap64((uint32_t)(uintptr_t)buffer),
	};
	asm volatile("" ::: "memory"); /* the descriptor is in RAM before QEMU reads it */
	outl(FW_CFG_PORT_DMA_HIGH, 0);
	outl(FW_CFG_PORT_DMA_LOW, __builtin_bswap32((uint32_t)(uintptr_t)&request));
	asm volatile("" ::: "memory"); /* and the buffer is read only after QEMU wrote it */
	if (request.control)
		stop("fw_cfg DMA failed", ", control ", __builtin_bswap32(request.control));
}

/* The next `length` bytes of `selector`'s item, from `offset`, into `buffer`. */
static void fw_cfg_read(uint16_t selector, uint32_t offset, void *buffer, uint32_t length)
{
	uint32_t select = (uint32_t)selector << 16 | FW_CFG_DMA_SELECT;
	if (offset) {
		fw_cfg_dma(select | FW_CFG_DMA_SKIP, 0, offset);
		select = 0;
	}
	fw_cfg_dma(select | FW_CFG_DMA_READ, buffer, length);
}

static uint32_t fw_cfg_u32(uint16_t selector)
{
	uint32_t value;
	fw_cfg_read(selector, 0, &value, sizeof(value));
	return value;
}

/* Through the data port, byte by byte: the only way in until DMA is known to be there. */
static uint32_t fw_cfg_u32_without_dma(uint16_t selector)
{
	outw(FW_CFG_PORT_SELECTOR, selector);
	uint32_t value = 0;
	for (int i = 0; i < 4; i++)
		value |= (uint32_t)inb(FW_CFG_PORT_DATA) << (8 * i);
	return value;
}

struct file_directory {
	const struct fw_cfg_file *files;
	uint32_t count;
};

static struct file_directory read_file_directory(void)
{
	uint32_t count;
	fw_cfg_read(FW_CFG_FILE_DIR, 0, &count, sizeof(count));
	count = __builtin_bswap32(count);
	if (count > FIRMWARE_FILE_DIR_MAX / sizeof(struct fw_cfg_file))
		stop("fw_cfg lists more files than the firmware has room for", ": ", count);
	struct fw_cfg_file *files = (struct fw_cfg_file *)FIRMWARE_FILE_DIR_PA;
	fw_cfg_read(FW_CFG_FILE_DIR, sizeof(count), files, count * sizeof(*files));
	for (uint32_t i = 0; i < count; i++) {
		files[i].size = __builtin_bswap32(files[i].size);
		files[i].select = __builtin_bswap16(files[i].select);
	}
	return (struct file_directory){files, count};
}

static const struct fw_cfg_file *find_file(struct file_directory directory, const char *name)
{
	for (uint32_t i = 0; i < directory.count; i++)
		if (name_is(directory.files[i].name, name))
			return &directory.files[i];
	return 0;
}

/* A whole file in one transfer, into the firmware's page for it (each transfer is a VM exit). */
static const void *read_whole(const struct fw_cfg_file *file)
{
	if (file->size > FIRMWARE_FILE_MAX)
		stop(file->name, " is larger than the firmware's room for it: bytes ", file->size);
	fw_cfg_read(file->select, 0, (void *)FIRMWARE_FILE_PA, file->size);
	return (const void *)FIRMWARE_FILE_PA;
}

/* -- what the kernel is handed ------------------------------------------------------------------ */

static uint32_t kernel_entry(void)
{
	uint32_t entry = fw_cfg_u32(FW_CFG_KERNEL_ENTRY);
	if (!entry)
		stop("no kernel to boot: QEMU was started without -kernel", 0, 0);
	static const char elf_magic[4] = {0x7F, 'E', 'L', 'F'};
	char header[4];
	fw_cfg_read(FW_CFG_SETUP_DATA, 0, header, sizeof(header));
	for (int i = 0; i < 4; i++)
		if (header[i] != elf_magic[i])
			stop("-kernel is not a PVH ELF (a bzImage or multiboot kernel needs qboot or SeaBIOS)", 0, 0);
	return entry;
}

static uint64_t read_cmdline(void)
{
	uint32_t size = fw_cfg_u32(FW_CFG_CMDLINE_SIZE); /* NUL included */
	if (!size)
		return 0;
	if (size > FIRMWARE_CMDLINE_MAX)
		stop("the command line (-append) is longer than the firmware's page for it", ": bytes ", size);
	char *cmdline = (char *)FIRMWARE_CMDLINE_PA;
	fw_cfg_read(FW_CFG_CMDLINE_DATA, 0, cmdline, size);
	cmdline[size - 1] = 0;
	return FIRMWARE_CMDLINE_PA;
}

static uint32_t add_range(struct hvm_memmap_table_entry *map, uint32_t count, uint64_t start, uint64_t end,
			  uint32_t type)
{
	if (start >= end)
		return count;
	if (count == MEMMAP_ENTRIES_MAX)
		stop("the memory map has more entries than the firmware has room for", ": ", count);
	map[count] = (struct hvm_memmap_table_entry){start, end - start, type, 0};
	return count + 1;
}

/*
 * fw_cfg's "etc/e820": QEMU's RAM and reserved ranges, 20 bytes each (address, length, type). QEMU
 * calls all of the first MiB RAM, but the legacy hole is not (the ROM's alias shadows its top), so
 * the map says reserved there, as a PC firmware's does.
 */
static uint32_t read_memory_map(struct file_directory directory, struct hvm_memmap_table_entry *map)
{
	const struct fw_cfg_file *e820 = find_file(directory, "etc/e820");
	if (!e820)
		stop("fw_cfg has no etc/e820: no memory map to hand the kernel", 0, 0);
	const struct PACKED {
		uint64_t address, length;
		uint32_t type;
	} *entries = read_whole(e820);
	uint32_t count = 0;
	for (uint32_t i = 0; i < e820->size / sizeof(*entries); i++) {
		uint64_t start = entries[i].address, end = start + entries[i].length;
		if (entries[i].type != E820_RAM || end <= LEGACY_HOLE_PA || start >= LEGACY_HOLE_END) {
			count = add_range(map, count, start, end, entries[i].type);
			continue;
		}
		count = add_range(map, count, start, LEGACY_HOLE_PA, E820_RAM);
		count = add_range(map, count, start > LEGACY_HOLE_PA ? start : LEGACY_HOLE_PA,
				  end < LEGACY_HOLE_END ? end : LEGACY_HOLE_END, E820_RESERVED);
		count = add_range(map, count, LEGACY_HOLE_END, end, E820_RAM);
	}
	return count;
}

struct allocation {
	const struct fw_cfg_file *file;
	uint8_t *address;
};

struct acpi_tables {
	struct allocation allocations[LOADER_ALLOCATIONS_MAX];
	uint32_t count;
	uint32_t next; /* where the next file goes */
};

static struct allocation *allocated(struct acpi_tables *tables, const char *name)
{
	for (uint32_t i = 0; i < tables->count; i++)
		if (name_is(tables->allocations[i].file->name, name))
			return &tables->allocations[i];
	stop("the ACPI loader uses a file (or leaves out the RSDP) it did not allocate", 0, 0);
}

static void loader_allocate(struct acpi_tables *tables, struct file_directory directory,
			    const struct loader_command *command)
{
	const struct fw_cfg_file *file = find_file(directory, command->allocate.file);
	uint32_t align = command->allocate.align;
	if (!file)
		stop("the ACPI loader allocates a file fw_cfg does not have", 0, 0);
	if (!align || align & (align - 1))
		stop("the ACPI loader asks for an alignment that is not a power of two", ": ", align);
	if (tables->count == LOADER_ALLOCATIONS_MAX)
		stop("the ACPI loader allocates more files than the firmware tracks", ": ", tables->count);
	uint32_t address = (tables->next + align - 1) & ~(align - 1);
	if (address < tables->next || file->size > FIRMWARE_ACPI_END - address)
		stop("the ACPI tables do not fit the firmware's area for them", ", needing bytes ", file->size);
	fw_cfg_read(file->select, 0, (void *)address, file->size);
	tables->allocations[tables->count++] = (struct allocation){file, (uint8_t *)address};
	tables->next = address + file->size;
}

/* The pointer at `offset` in one file, little-endian of `size` bytes, plus another file's address. */
static void loader_add_pointer(struct acpi_tables *tables, const struct loader_command *command)
{
	struct allocation *destination = allocated(tables, command->add_pointer.destination);
	struct allocation *source = allocated(tables, command->add_pointer.source);
	uint32_t offset = command->add_pointer.offset, size = command->add_pointer.size;
	if ((size != 1 && size != 2 && size != 4 && size != 8) || offset > destination->file->size ||
	    size > destination->file->size - offset)
		stop("the ACPI loader patches a pointer outside its file", ", at offset ", offset);
	uint8_t *field = destination->address + offset;
	uint64_t pointer = 0;
	for (uint32_t i = 0; i < size; i++)
		pointer |= (uint64_t)field[i] << (8 * i);
	pointer += (uint32_t)(uintptr_t)source->address;
	for (uint32_t i = 0; i < size; i++)
		field[i] = (uint8_t)(pointer >> (8 * i));
}

/* The byte at result_offset makes [start, start + length) sum to zero (it is zero beforehand). */
static void loader_add_checksum(struct acpi_tables *tables, const struct loader_command *command)
{
	struct allocation *table = allocated(tables, command->add_checksum.file);
	uint32_t start = command->add_checksum.start, length = command->add_checksum.length;
	uint32_t result = command->add_checksum.result_offset, size = table->file->size;
	if (result >= size || start > size || length > size - start)
		stop("the ACPI loader checksums a range outside its file", ", at offset ", start);
	uint8_t sum = 0;
	for (uint32_t i = 0; i < length; i++)
		sum += table->address[start + i];
	table->address[result] -= sum;
}

/* Runs fw_cfg's "etc/table-loader"; the RSDP's address, or 0 when the machine has no ACPI. */
static uint64_t load_acpi_tables(struct file_directory directory)
{
	const struct fw_cfg_file *script = find_file(directory, "etc/table-loader");
	if (!script)
		return 0;
	const struct loader_command *commands = read_whole(script);
	struct acpi_tables tables = {.next = FIRMWARE_ACPI_PA};
	for (uint32_t i = 0; i < script->size / sizeof(*commands); i++) {
		const struct loader_command *command = &commands[i];
		switch (command->command) {
		case 0: /* an unused entry */
			break;
		case LOADER_ALLOCATE:
			loader_allocate(&tables, directory, command);
			break;
		case LOADER_ADD_POINTER:
			loader_add_pointer(&tables, command);
			break;
		case LOADER_ADD_CHECKSUM:
			loader_add_checksum(&tables, command);
			break;
		default:
			stop("the ACPI loader has a command the firmware does not implement", ": ", command->command);
		}
	}
	return (uint32_t)(uintptr_t)allocated(&tables, "etc/acpi/rsdp")->address;
}

NORETURN void firmware_main(void)
{
	if (fw_cfg_u32_without_dma(FW_CFG_SIGNATURE) != ('Q' | 'E' << 8 | 'M' << 16 | (uint32_t)'U' << 24))
		stop("no QEMU fw_cfg device at its I/O ports", 0, 0);
	if (!(fw_cfg_u32_without_dma(FW_CFG_ID) & FW_CFG_ID_DMA))
		stop("QEMU's fw_cfg has no DMA interface", ", features ", fw_cfg_u32_without_dma(FW_CFG_ID));
	uint32_t entry = kernel_entry();
	struct file_directory directory = read_file_directory();

	struct hvm_start_info *start_info = (struct hvm_start_info *)FIRMWARE_START_INFO_PA;
	struct hvm_memmap_table_entry *map = (struct hvm_memmap_table_entry *)(start_info + 1);
	uint64_t cmdline = read_cmdline();
	uint32_t map_entries = read_memory_map(directory, map);
	uint64_t rsdp = load_acpi_tables(directory);
	*start_info = (struct hvm_start_info){
		.magic = HVM_START_MAGIC,
		.version = 1,
		.cmdline_paddr = cmdline,
		.rsdp_paddr = rsdp,
		.memmap_paddr = (uint32_t)(uintptr_t)map,
		.memmap_entries = map_entries,
	};
	asm volatile("jmp *%0" ::"r"(entry), "b"(start_info) : "memory");
	__builtin_unreachable();
}
