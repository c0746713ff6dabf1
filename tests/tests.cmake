# Test registration (included from CMakeLists.txt). td_test(name source labels [args...])
td_test(test_model_reference tests/unit/test_model_reference.c unit)
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
