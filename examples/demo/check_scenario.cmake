# Runs one seed scenario program in a clean directory and checks that it succeeded: exit status 0 and a line
# "ok <scenario>" (each program prints it only after checking its outcome in the databases).
# Usage: cmake -DPROGRAM=<binary> -DSCENARIO=<name> -DWORK_DIR=<dir> [-DARGS=<a;b;…>] [-DBROKER_ENV=<VAR>]
#              -P check_scenario.cmake
# ARGS come before `--dir WORK_DIR` (e.g. the `demo` mode of foo_bar). BROKER_ENV names an environment variable holding
# the broker URI to pass as `--broker` (e.g. KEEL_TEST_RABBITMQ); the test fails when it is unset.
if(BROKER_ENV)
  if("$ENV{${BROKER_ENV}}" STREQUAL "")
    message(FATAL_ERROR "${SCENARIO}: ${BROKER_ENV} is not set. Start the server and export its URI: "
                        "scripts/services.sh start rabbitmq && eval \"$(scripts/services.sh env)\"")
  endif()
  list(APPEND ARGS --broker "$ENV{${BROKER_ENV}}")
endif()
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

execute_process(COMMAND ${PROGRAM} ${ARGS} --dir ${WORK_DIR}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}")
if(NOT err STREQUAL "")
  message("stderr:\n${err}")
endif()
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${SCENARIO}: exit status ${rc}, expected 0")
endif()
if(NOT out MATCHES "(^|\n)ok ${SCENARIO}\n")
  message(FATAL_ERROR "${SCENARIO}: no line \"ok ${SCENARIO}\" in the output")
endif()
file(REMOVE_RECURSE ${WORK_DIR})
