// Emulated CUDA device: the data types cuBLAS and friends take (values as in
// CUDA 12's library_types.h).
#ifndef EP_EMU_LIBRARY_TYPES_H
#define EP_EMU_LIBRARY_TYPES_H

typedef enum cudaDataType_t {
    CUDA_R_16F = 2,
    CUDA_R_32F = 0,
    CUDA_R_64F = 1,
    CUDA_R_16BF = 14,
    CUDA_R_8F_E4M3 = 28,
    CUDA_R_8F_E5M2 = 29
} cudaDataType;
typedef cudaDataType cudaDataType_t;

#endif
