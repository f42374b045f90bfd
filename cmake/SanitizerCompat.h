//===- SanitizerCompat.h - instrumented mhc on uninstrumented LLVM -*- C++ -*-//
//
// Force-included into every C++ file of the sanitizer build (MHC_SANITIZE).
// LLVM's headers see ASan and turn on the annotations of its bump allocators
// (poison a new slab, unpoison each allocation, red zones between them), but
// libLLVM/libMLIR are not instrumented: a slab that mhc's code poisons is
// then handed out by MLIR's uninstrumented copy of the allocator without
// being unpoisoned, and ASan reports MLIR's own writes. With the
// annotations off here, both sides use the allocators the same way; ASan
// still checks every access mhc's code makes.
//
//===----------------------------------------------------------------------===//
#ifndef MHC_CMAKE_SANITIZERCOMPAT_H
#define MHC_CMAKE_SANITIZERCOMPAT_H

#include <sanitizer/asan_interface.h>
#include "llvm/Support/Compiler.h"

#undef LLVM_ADDRESS_SANITIZER_BUILD
#define LLVM_ADDRESS_SANITIZER_BUILD 0
#define __asan_poison_memory_region(p, size) ((void)(p), (void)(size))
#define __asan_unpoison_memory_region(p, size) ((void)(p), (void)(size))

#endif // MHC_CMAKE_SANITIZERCOMPAT_H
