# Test registration (included from CMakeLists.txt). td_test(name source labels [args...])
td_test(test_model_reference tests/unit/test_model_reference.c unit)
td_test(test_ops_gradcheck tests/unit/test_ops_gradcheck.c unit)
td_test(test_bad_input tests/unit/test_bad_input.c unit)
add_test(NAME test_train_resume COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/test_train_resume.sh
         $<TARGET_FILE:tandem>)
set_tests_properties(test_train_resume PROPERTIES LABELS "e2e" TIMEOUT 600)
