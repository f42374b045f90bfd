/*===- Dialects.h - C API for the mhc dialect ---------------------*- C -*-===*\
|*                                                                            *|
|* The mhc dialect handle, in MLIR's C-API style: register or load it with    *|
|* mlirDialectHandleInsertDialect / mlirDialectHandleRegisterDialect /        *|
|* mlirDialectHandleLoadDialect. docs/Embedding.md has a complete example.    *|
|*                                                                            *|
\*===----------------------------------------------------------------------===*/
#ifndef MHC_C_DIALECTS_H
#define MHC_C_DIALECTS_H

#include "mlir-c/IR.h"

#ifdef __cplusplus
extern "C" {
#endif

MLIR_DECLARE_CAPI_DIALECT_REGISTRATION(MHC, mhc);

#ifdef __cplusplus
}
#endif

#endif /* MHC_C_DIALECTS_H */
