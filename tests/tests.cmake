# Test registration (included from CMakeLists.txt). td_test(name source labels [args...]);
# td_e2e(name labels timeout): the script tests/e2e/NAME.sh run on the tandem binary.
function(td_e2e name labels timeout)
    add_test(NAME ${name} COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/${name}.sh
             $<TARGET_FILE:tandem>)
    # the control plane's CURVE keys of the tests, apart from the user's own
    set_tests_properties(${name} PROPERTIES LABELS "${labels}" TIMEOUT ${timeout}
                         ENVIRONMENT "TANDEM_KEYS=${CMAKE_BINARY_DIR}/test-keys")
endfunction()
td_test(test_model_reference tests/unit/test_model_reference.c unit)
td_test(test_bf16_reference tests/unit/test_bf16_reference.c unit)
td_test(test_gptq tests/unit/test_gptq.c unit)
td_test(test_ops_gradcheck tests/unit/test_ops_gradcheck.c unit)
td_test(test_kd_reference tests/unit/test_kd_reference.c unit) # distillation loss vs PyTorch
td_test(test_kd_model tests/unit/test_kd_model.c unit) # distillation inside the model
td_test(test_bad_input tests/unit/test_bad_input.c unit)
td_test(test_blas_select tests/unit/test_blas_select.c unit)
td_test(test_chatml tests/unit/test_chatml.c unit)
td_e2e(test_train_resume "e2e" 600)
td_e2e(test_cli_errors "e2e" 300)
td_test(test_data_loader tests/unit/test_data_loader.c unit)
td_test(test_safetensors tests/unit/test_safetensors.c unit)
td_test(test_train_reference tests/unit/test_train_reference.c unit)
td_test(test_lora_reference tests/unit/test_lora_reference.c unit)
td_test(test_tokenizer tests/unit/test_tokenizer.c unit)
td_test(test_prep_planted tests/unit/test_prep_planted.c unit)
td_e2e(test_prep_mpi "mpi;e2e" 600)
td_e2e(test_prep_errors "e2e" 300)
td_test(test_tokenizer_json tests/unit/test_tokenizer_json.c unit)
td_e2e(test_train_dp "mpi;e2e" 600)
td_e2e(test_finetune "mpi;e2e" 600)
td_e2e(test_distill "mpi;e2e" 300)
td_e2e(test_synthesize e2e 300)
td_e2e(test_select e2e 300)
# simulated hosts (network namespaces, scripts/netns-hosts.sh); exits 77 where they cannot
# be made
td_e2e(test_multihost "multihost;mpi;e2e" 300)
set_tests_properties(test_multihost PROPERTIES SKIP_RETURN_CODE 77 RUN_SERIAL TRUE)
# a one-node Slurm from Debian's packages (scripts/install-deps.sh --slurm); exits 77 where
# they are missing or cannot run
td_e2e(test_slurm "slurm;mpi;e2e" 400)
set_tests_properties(test_slurm PROPERTIES SKIP_RETURN_CODE 77 RUN_SERIAL TRUE)
td_e2e(test_deploy "deploy;e2e" 60) # deploy/: systemd units verified, Slurm scripts parsed
td_e2e(test_blas_core "mpi;e2e" 120)
td_e2e(test_serve_idle "e2e" 180)
td_e2e(test_train_faults "mpi;e2e" 300)
td_e2e(test_gateway_slow "e2e" 180)
td_e2e(test_router_restart "e2e" 120)
td_e2e(test_serve_tp_faults "mpi;e2e" 120)
td_e2e(test_train_kill "mpi;e2e" 300)
td_test(test_infer_engine tests/unit/test_infer_engine.c unit)
td_test(test_infer_adapters tests/unit/test_infer_adapters.c unit)
add_executable(test_tp_logits tests/mpi/test_tp_logits.c)
target_link_libraries(test_tp_logits PRIVATE td_train)
add_test(NAME test_tp_logits COMMAND mpirun -np 4 $<TARGET_FILE:test_tp_logits>
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_tp_logits PROPERTIES LABELS "mpi" TIMEOUT 300 ENVIRONMENT
    "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1;OMPI_MCA_btl=self,vader;OMPI_MCA_pml=ob1;OMP_NUM_THREADS=1")
td_e2e(test_serve "mpi;e2e" 600)
td_test(test_clean tests/unit/test_clean.c unit)
td_test(test_grow tests/unit/test_grow.c unit)
td_test(test_request_defaults tests/unit/test_request_defaults.c unit)
td_test(test_backend_device tests/unit/test_backend_device.c unit)
td_e2e(test_router "e2e" 600)
td_e2e(test_gateway "e2e" 600)
# the same bf16 checks on a CPU oneDNN treats as having no bf16 matrix product (AVX2 only)
add_test(NAME test_bf16_reference_avx2 COMMAND test_bf16_reference WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_bf16_reference_avx2 PROPERTIES LABELS "unit" TIMEOUT 600
    ENVIRONMENT "ONEDNN_MAX_CPU_ISA=AVX2" PASS_REGULAR_EXPRESSION "instruction set: avx2\n")
td_e2e(test_train_bf16 "e2e" 600)
if(TANDEM_CUDA)
    # every CUDA kernel against the CPU reference; exits 77 (skipped) without a usable GPU
    add_executable(test_gpu_parity tests/gpu/test_gpu_parity.c)
    target_link_libraries(test_gpu_parity PRIVATE td_train)
    add_test(NAME test_gpu_parity COMMAND test_gpu_parity)
    set_tests_properties(test_gpu_parity PROPERTIES LABELS "gpu" TIMEOUT 300
        SKIP_RETURN_CODE 77)
endif()

# unit tests of one library below td_train: name, the library
function(td_unit_of name lib)
    add_executable(${name} tests/unit/${name}.c)
    target_link_libraries(${name} PRIVATE ${lib})
    add_test(NAME ${name} COMMAND ${name} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(${name} PROPERTIES LABELS "unit" TIMEOUT 60)
endfunction()
td_unit_of(test_sched td_sched)    # the scheduler's decisions, table-driven
td_unit_of(test_journal td_coord)  # the coordinator's journal: torn tails, damage, SIGKILL
td_unit_of(test_jobs td_coord)     # the job table's events and its replay
td_unit_of(test_stages td_coord)   # job files, command lines, inputs, pipeline files
# the control plane's CURVE keys and ZAP check against rogue ZeroMQ clients
td_unit_of(test_control_auth td_coord)
# the control socket under malformed, oversized and foreign messages: error replies, still serving
td_unit_of(test_control_socket td_coord)

# minutes of faults under load: `cd build && ctest -L slow` (make test leaves it out)
td_e2e(test_chaos "slow" 3600)

# the include-layer check itself (scripts/check-layers.sh) on a planted forbidden include
add_test(NAME test_check_layers COMMAND bash ${CMAKE_SOURCE_DIR}/tests/check_layers_test.sh
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_check_layers PROPERTIES LABELS "unit" TIMEOUT 60)
td_e2e(test_serve_adapters "mpi;e2e" 300)
td_e2e(test_coordinator "mpi;e2e" 400)
td_e2e(test_pipeline "mpi;e2e" 600)
td_e2e(test_supervisor "mpi;e2e" 600)
td_e2e(test_preempt "mpi;e2e" 600)
