/*
 * Raw loads and stores through a VA (the agent's read_va/write_va): not fault tolerant, on
 * purpose, so an unmapped VA stops the kernel exactly as NT would.
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Byte by byte, ascending, so a fault names the first inaccessible byte. */
void raw_read(uint64_t va, uint8_t *out, size_t length);
void raw_write(uint64_t va, const uint8_t *in, size_t length);

/* For #GP: when a raw access is under way and reaches a non-canonical address, that address. */
bool raw_access_non_canonical(uint64_t *va, bool *write);
