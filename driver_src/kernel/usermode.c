/* User mode (include/usermode.h): the user half of the kernel's tables and the ring-3 probe. */
#include "usermode.h"
#include "bugcodes.h"
#include "cpu.h"
#include "kstring.h"
#include "layout.h"
#include "ntddk.h"
#include "pagetable.h"
#include "x86.h"

extern const char ring3_probe_page[], ring3_probe_done[];
void ring3_enter(uint64_t rip, uint64_t rsp, uint64_t rdi, uint64_t rsi, uint64_t rdx);
NORETURN void ring3_abandon(void);

static uint8_t probe_stack[PAGE_SIZE] ALIGNED(PAGE_SIZE);
static bool user_half_ready;
static bool view_in_use[USER_VIEW_PAGES];

static struct user_probe_result probe_result;

uint64_t pte_user_leaf(uint64_t pa, bool writable)
{
	return pa | PTE_P | PTE_US | PTE_A | PTE_D | (writable ? PTE_RW : 0) | (cpu.nx ? PTE_NX : 0);
}

/* Creates the page table that maps va and sets U/S on every entry above it. */
static bool build_user_table(uint64_t va)
{
	struct pt_view live = pt_live();
	if (!pt_prepare(&live, va, 1))
		return false;
	for (unsigned level = paging_levels; level > 1; level--)
		*pt_walk_to(&live, va, level).slot |= PTE_US;
	return true;
}

static void map_user_leaf(uint64_t va, uint64_t entry)
{
	struct pt_view live = pt_live();
	tlb_flush(pt_set(&live, va, 1, entry));
}

bool usermode_init(void)
{
	if (user_half_ready)
		return true;
	if (!build_user_table(USER_REGION_BASE) || !build_user_table(USER_VIEW_BASE))
		return false;
	/* Aliases of two kernel-image pages: the probe's code (user R X) and its stack (user RW NX). */
	map_user_leaf(USER_PROBE_CODE_VA, image_virt_to_phys(ring3_probe_page) | PTE_P | PTE_US | PTE_A);
	map_user_leaf(USER_PROBE_STACK_VA, pte_user_leaf(image_virt_to_phys(probe_stack), true));
	user_half_ready = true;
	return true;
}

struct user_probe_result usermode_probe(uint64_t va, unsigned op, uint64_t value)
{
	ring3_enter(USER_PROBE_CODE_VA, USER_PROBE_STACK_VA + PAGE_SIZE, va, op, value);
	return probe_result;
}

#define VECTOR_INVALID_OPCODE 6

void usermode_fault(const struct trap_frame *f, uint64_t cr2)
{
	if (!user_half_ready) /* ring 3 without a probe in flight cannot happen */
		KeBugCheckEx(UNEXPECTED_KERNEL_MODE_TRAP, f->vector, 0, 0, 0);
	uint64_t done = USER_PROBE_CODE_VA + (uint64_t)(ring3_probe_done - ring3_probe_page);
	if (f->vector == VECTOR_INVALID_OPCODE && f->rip == done)
		probe_result = (struct user_probe_result){.completed = true, .value = f->rax};
	else
		probe_result = (struct user_probe_result){
			.completed = false, .vector = f->vector, .error = f->error, .address = cr2, .rip = f->rip};
	ring3_abandon();
}

uint64_t user_view_reserve(uint64_t count)
{
	if (count == 0 || count > USER_VIEW_PAGES || !usermode_init())
		return 0;
	for (uint64_t first = 0; first + count <= USER_VIEW_PAGES; first++) {
		uint64_t n = 0;
		while (n < count && !view_in_use[first + n])
			n++;
		if (n == count) {
			for (uint64_t i = 0; i < count; i++)
				view_in_use[first + i] = true;
			return USER_VIEW_BASE + first * PAGE_SIZE;
		}
		first += n;
	}
	return 0;
}

uint64_t user_view_reserve_at(uint64_t va, uint64_t count)
{
	if (count == 0 || count > USER_VIEW_PAGES || va < USER_VIEW_BASE || va > USER_REGION_END - count * PAGE_SIZE ||
	    !usermode_init())
		return 0;
	uint64_t first = (va - USER_VIEW_BASE) / PAGE_SIZE;
	for (uint64_t i = 0; i < count; i++)
		if (view_in_use[first + i])
			return 0;
	for (uint64_t i = 0; i < count; i++)
		view_in_use[first + i] = true;
	return va;
}

void user_view_release(uint64_t va, uint64_t count)
{
	uint64_t first = (va - USER_VIEW_BASE) / PAGE_SIZE;
	for (uint64_t i = 0; i < count; i++)
		view_in_use[first + i] = false;
}

void user_map_page(uint64_t va, uint64_t entry)
{
	map_user_leaf(va, entry);
}

void user_unmap_page(uint64_t va)
{
	struct pt_view live = pt_live();
	uint64_t old;
	tlb_flush(pt_clear(&live, va, &old));
}
