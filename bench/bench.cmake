# Benchmarks besides bench_train (included from CMakeLists.txt).
# bench_tokenizer: tandem's BPE encoder against Hugging Face tokenizers (bench/tokenizers_speed.py
# through .venv/bin/python); TD_SOURCE_DIR lets it find the venv, the script and the fixture
# tokenizer from any working directory.
add_executable(bench_tokenizer bench/bench_tokenizer.c)
target_link_libraries(bench_tokenizer PRIVATE td_data)
target_compile_definitions(bench_tokenizer PRIVATE TD_SOURCE_DIR="${CMAKE_SOURCE_DIR}")

# bench_comm: tandem's all-reduce path vs bare MPI_Allreduce, and overlap in a training step
add_executable(bench_comm bench/bench_comm.c)
target_link_libraries(bench_comm PRIVATE td_train)

# bench_decode: decode tokens/s at batch 1 and 16, fp32 and int8, against the triad roofline
add_executable(bench_decode bench/bench_decode.c)
target_link_libraries(bench_decode PRIVATE td_train)

# bench_quant: how closely int8 greedy decoding follows fp32 on a checkpoint
add_executable(bench_quant bench/bench_quant.c)
target_link_libraries(bench_quant PRIVATE td_train)

# bench_serving: HTTP load against the gateway (Poisson arrivals, TTFT/TPOT, router+gateway overhead)
add_executable(bench_serving bench/bench_serving.c)
target_link_libraries(bench_serving PRIVATE PkgConfig::CJSON Threads::Threads ${LIBM})

# bench_gemm: fp32 product GFLOP/s by kernel choice (OpenBLAS as shipped, corrected, forced;
# oneDNN f32), each configuration in its own process
add_executable(bench_gemm bench/bench_gemm.c)
target_link_libraries(bench_gemm PRIVATE td_kernels)
