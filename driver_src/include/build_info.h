/* The build id the Makefile derives from every guest source file. */
#pragma once

extern const char mmhil_build_id[];
