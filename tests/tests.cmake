# Test registration (included from CMakeLists.txt). td_test(name source labels [args...])
td_test(test_model_reference tests/unit/test_model_reference.c unit)
td_test(test_bf16_reference tests/unit/test_bf16_reference.c unit)
td_test(test_ops_gradcheck tests/unit/test_ops_gradcheck.c unit)
td_test(test_bad_input tests/unit/test_bad_input.c unit)
add_test(NAME test_train_resume COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/test_train_resume.sh
         $<TARGET_FILE:tandem>)
set_tests_properties(test_train_resume PROPERTIES LABELS "e2e" TIMEOUT 600)
add_test(NAME test_cli_errors COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/test_cli_errors.sh
         $<TARGET_FILE:tandem>)
set_tests_properties(test_cli_errors PROPERTIES LABELS "e2e" TIMEOUT 300)
td_test(test_data_loader tests/unit/test_data_loader.c unit)
td_test(test_safetensors tests/unit/test_safetensors.c unit)
td_test(test_train_reference tests/unit/test_train_reference.c unit)
td_test(test_tokenizer tests/unit/test_tokenizer.c unit)
td_test(test_prep_planted tests/unit/test_prep_planted.c unit)
add_test(NAME test_prep_mpi COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/test_prep_mpi.sh
         $<TARGET_FILE:tandem>)
set_tests_properties(test_prep_mpi PROPERTIES LABELS "mpi;e2e" TIMEOUT 600)
add_test(NAME test_prep_errors COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/test_prep_errors.sh
         $<TARGET_FILE:tandem>)
set_tests_properties(test_prep_errors PROPERTIES LABELS "e2e" TIMEOUT 300)
td_test(test_tokenizer_json tests/unit/test_tokenizer_json.c unit)
add_test(NAME test_train_dp COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/test_train_dp.sh
         $<TARGET_FILE:tandem>)
set_tests_properties(test_train_dp PROPERTIES LABELS "mpi;e2e" TIMEOUT 600)
add_test(NAME test_train_kill COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/test_train_kill.sh
         $<TARGET_FILE:tandem>)
set_tests_properties(test_train_kill PROPERTIES LABELS "mpi;e2e" TIMEOUT 300)
td_test(test_infer_engine tests/unit/test_infer_engine.c unit)
add_executable(test_tp_logits tests/mpi/test_tp_logits.c)
target_link_libraries(test_tp_logits PRIVATE td_train)
add_test(NAME test_tp_logits COMMAND mpirun -np 4 $<TARGET_FILE:test_tp_logits>
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_tp_logits PROPERTIES LABELS "mpi" TIMEOUT 300 ENVIRONMENT
    "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1;OMPI_MCA_btl=self,vader;OMPI_MCA_pml=ob1;OMP_NUM_THREADS=1")
add_test(NAME test_serve COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/test_serve.sh
         $<TARGET_FILE:tandem>)
set_tests_properties(test_serve PROPERTIES LABELS "mpi;e2e" TIMEOUT 600)
td_test(test_clean tests/unit/test_clean.c unit)
add_test(NAME test_router COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/test_router.sh
         $<TARGET_FILE:tandem>)
set_tests_properties(test_router PROPERTIES LABELS "e2e" TIMEOUT 600)
add_test(NAME test_gateway COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/test_gateway.sh
         $<TARGET_FILE:tandem>)
set_tests_properties(test_gateway PROPERTIES LABELS "e2e" TIMEOUT 600)
# the same bf16 checks on a CPU oneDNN treats as having no bf16 matrix product (AVX2 only)
add_test(NAME test_bf16_reference_avx2 COMMAND test_bf16_reference WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_bf16_reference_avx2 PROPERTIES LABELS "unit" TIMEOUT 600
    ENVIRONMENT "ONEDNN_MAX_CPU_ISA=AVX2" PASS_REGULAR_EXPRESSION "instruction set: avx2\n")
add_test(NAME test_train_bf16 COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/test_train_bf16.sh
         $<TARGET_FILE:tandem>)
set_tests_properties(test_train_bf16 PROPERTIES LABELS "e2e" TIMEOUT 600)
if(TANDEM_CUDA)
    # every CUDA kernel against the CPU reference; exits 77 (skipped) without a usable GPU
    add_executable(test_gpu_parity tests/gpu/test_gpu_parity.c)
    target_link_libraries(test_gpu_parity PRIVATE td_train)
    add_test(NAME test_gpu_parity COMMAND test_gpu_parity)
    set_tests_properties(test_gpu_parity PROPERTIES LABELS "gpu" TIMEOUT 300
        SKIP_RETURN_CODE 77)
endif()
