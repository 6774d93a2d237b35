#pragma once
// keeld's HTTP API: DTM's routes under /api/dtmsvr (docs/http-api.md) mapped onto the coordinator Engine, plus
// /api/ping and /healthz. The one place where engine results become HTTP statuses and bodies.

#include <boost/asio/io_context.hpp>
#include <string>

#include "coordinator/engine.hpp"
#include "net/http_server.hpp"

namespace keel::keeld {

struct ApiOptions {
    std::string token;  // when set, every route but /api/ping and /healthz needs "Authorization: Bearer <token>"
};

/// The request handler for net::HttpServer. `engine` must outlive the server.
net::Handler MakeApiHandler(boost::asio::io_context& io, coordinator::Engine& engine, ApiOptions options);

/// The JSON text of a 200 body: "FAILURE" inside strings is written with a JSON escape (FAILUR\u0045), so that DTM
/// clients, which treat any reply containing FAILURE as a failure, never misread a successful reply.
std::string SafeJson(const nlohmann::json& body);

}  // namespace keel::keeld
