# Runs the README example twice in a clean directory:
# - the first run must exit 0 and print exactly "jun";
# - the second run must fail (the example appends with ExpectedVersion::NoStream) and say why.
# Usage: cmake -DEXAMPLE=<binary> -DWORK_DIR=<dir> -P check_output.cmake
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

execute_process(COMMAND ${EXAMPLE} WORKING_DIRECTORY ${WORK_DIR}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "first run: exit ${rc}, stdout [${out}], stderr [${err}]")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the README example failed")
endif()
if(NOT out STREQUAL "jun\n")
  message(FATAL_ERROR "the README example should print \"jun\"")
endif()

execute_process(COMMAND ${EXAMPLE} WORKING_DIRECTORY ${WORK_DIR}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "second run: exit ${rc}, stdout [${out}], stderr [${err}]")
if(rc EQUAL 0 OR NOT err MATCHES "wrong_expected_version")
  message(FATAL_ERROR "a second run should fail with wrong_expected_version: User-123 already exists")
endif()
