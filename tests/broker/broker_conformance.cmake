# The broker conformance suite (broker_conformance.hpp), compiled once as an object library so that every broker's
# test binary links the same TEST_Ps and adds one INSTANTIATE line. An OBJECT library, not a static one: nothing
# references the TEST_P registrations, so a static archive's members would be dropped by the linker.
#
# Included by each broker's CMakeLists.txt (src/broker/local/, src/broker/rabbitmq/) and by tests/broker/; the first
# include defines the target, later ones find it defined.
if(KEEL_BUILD_TESTS AND NOT TARGET keel_broker_conformance)
  add_library(keel_broker_conformance OBJECT ${CMAKE_CURRENT_LIST_DIR}/broker_conformance.cpp)
  keel_apply_warnings(keel_broker_conformance)
  target_include_directories(keel_broker_conformance PUBLIC ${PROJECT_SOURCE_DIR}/tests
                             PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(keel_broker_conformance PUBLIC keel::keel GTest::gtest GTest::gmock)
endif()
