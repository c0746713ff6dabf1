# Test registration (included from CMakeLists.txt). td_test(name source labels [args...])
