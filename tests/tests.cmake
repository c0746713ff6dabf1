# Test registration (included from CMakeLists.txt). td_test(name source labels [args...])
td_test(test_model_reference tests/unit/test_model_reference.c unit)
td_test(test_ops_gradcheck tests/unit/test_ops_gradcheck.c unit)
