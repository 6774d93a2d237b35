// Seed 001: event-driven data management across two services, and a materialized view of both.
//
//   order_customer [--dir DIR] [--broker URI]    (defaults: a new directory under /tmp; local://DIR/broker.db)
//
// Three services run as objects in this one process, each with its OWN SQLite database opened as a keel event store
// (its tables beside keel's) and its own threads; they share nothing but the broker:
//   - Order service (DIR/order.db): places an order with status NEW and an OrderCreated event, in one unit of work
//     that also queues the event in its outbox; consumes the customer's answer and sets the order OPEN
//     (OrderApproved) or REJECTED (OrderRejected).
//   - Customer service (DIR/customer.db): consumes OrderCreated and reserves credit (CreditReserved) or refuses it
//     (CreditLimitExceeded). Reserving credit is not idempotent: only its consumer's inbox keeps a duplicate
//     delivery from reserving twice.
//   - Customer-orders view (DIR/view.db): receives both services' events through the broker, records them in its own
//     event store (same event ids), and a Projection over that store keeps the "customer orders" tables, batch by
//     batch together with its checkpoint. (A Projection reads one event store, and the view pre-joins data owned by
//     two services: so both services' events have to reach the view's store first — see docs/examples.md.)
// Every service publishes through its outbox and a Relay; every consumer deduplicates with its inbox.
//
// The scenario places four orders, checks the outcome in all three databases, then injects duplicates (both outboxes
// republished in full, and one message published again by hand) and checks that nothing changed; finally the view is
// damaged and rebuilt from its own store.
//
// Exit status: 0 when every check held (the last line is then "ok order_customer"), 1 otherwise.

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

#include <fmt/core.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "keel/broker.hpp"
#include "keel/consumer.hpp"
#include "keel/event_store.hpp"
#include "keel/outbox.hpp"
#include "keel/projection.hpp"
#include "keel/unit_of_work.hpp"

namespace {

namespace fs = std::filesystem;
using keel::Delivery;
using keel::EventStore;
using keel::Result;
using keel::Status;
using keel::UnitOfWork;
using nlohmann::json;
using namespace std::chrono_literals;

constexpr const char* kOrderEvents = "order-events";        // what the Order service publishes
constexpr const char* kCustomerEvents = "customer-events";  // what the Customer service publishes

int g_failed_checks = 0;

bool Check(bool ok, std::string_view what) {
    fmt::print("    [{}] {}\n", ok ? "ok" : "FAILED", what);
    if (!ok) ++g_failed_checks;
    return ok;
}

void Step(int n, std::string_view title) {
    fmt::print("\n{}. {}\n", n, title);
}

template <class Pred>
bool WaitUntil(Pred pred, std::chrono::milliseconds limit = 60s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(20ms);
    }
    return true;
}

// ---- Small helpers shared by the services ---------------------------------------------------------------------

// An event's JSON payload, read without exceptions (a malformed payload reads as empty fields).
json Parse(std::string_view text) {
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    return j.is_object() ? j : json::object();
}
std::string Str(const json& j, const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}
int64_t Int(const json& j, const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_number_integer() ? it->get<int64_t>() : 0;
}
std::string Header(const keel::Message& m, std::string_view name) {
    for (const auto& [k, v] : m.headers) {
        if (k == name) return v;
    }
    return {};
}

// Records a domain event in the service's own event store and queues it in the outbox, both in `uow`. The event id
// is the message id, so every hop (broker, inbox, the view's store) deduplicates by the same id. The ordering key is
// the customer: one customer's messages are handled in the order they were published.
Result<keel::OutboxMessage> Emit(UnitOfWork& uow, const char* destination, const std::string& stream,
                                 keel::ExpectedVersion expected, const std::string& type, const json& data,
                                 const std::string& customer_id) {
    const keel::Uuid id = keel::Uuid::Generate();
    const std::string payload = data.dump();
    KEEL_RETURN_IF_ERROR(uow.Append(stream, expected, {keel::EventData{id, type, payload, ""}}).status());
    keel::OutboxMessage message{
        destination, "Customer-" + customer_id, id, payload, {{"type", type}, {"stream", stream}}};
    KEEL_RETURN_IF_ERROR(uow.Enqueue(message).status());
    return message;
}

Result<std::unique_ptr<EventStore>> OpenServiceStore(const fs::path& db, const std::vector<std::string>& schema) {
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(db.string() + suffix);
    KEEL_ASSIGN_OR_RETURN(std::unique_ptr<EventStore> store, keel::OpenStore("sqlite://" + db.string()));
    KEEL_ASSIGN_OR_RETURN(UnitOfWork uow, UnitOfWork::Begin(*store));
    for (const std::string& sql : schema) KEEL_RETURN_IF_ERROR(uow.Exec(sql).status());
    KEEL_RETURN_IF_ERROR(uow.Commit());
    return store;
}

keel::ConsumerOptions ConsumerNamed(std::string name) {
    keel::ConsumerOptions options;
    options.name = std::move(name);
    return options;
}

// ---- Order service --------------------------------------------------------------------------------------------

class OrderService {
public:
    static Result<std::unique_ptr<OrderService>> Start(const fs::path& db, keel::Broker& broker) {
        auto service = std::unique_ptr<OrderService>(new OrderService());
        KEEL_ASSIGN_OR_RETURN(service->store_,
                              OpenServiceStore(db, {"CREATE TABLE orders (id TEXT PRIMARY KEY, customer_id TEXT "
                                                    "NOT NULL, total INTEGER NOT NULL, status TEXT NOT NULL)"}));
        auto handler = [self = service.get()](UnitOfWork& uow, const Delivery& d) {
            return self->OnCustomerEvent(uow, d);
        };
        KEEL_ASSIGN_OR_RETURN(service->consumer_,
                              keel::Consumer::Start(*service->store_, broker, kCustomerEvents, "order-service", handler,
                                                    ConsumerNamed("order-service")));
        KEEL_ASSIGN_OR_RETURN(service->relay_, keel::Relay::Start(*service->store_, broker));
        return service;
    }

    // Creates order o-N with status NEW and queues OrderCreated, in one unit of work. Returns the queued message
    // (kept by the scenario only to publish it again as a duplicate).
    Result<keel::OutboxMessage> PlaceOrder(const std::string& customer_id, int64_t total) {
        KEEL_ASSIGN_OR_RETURN(UnitOfWork uow, UnitOfWork::Begin(*store_));
        KEEL_ASSIGN_OR_RETURN(keel::Rows count, uow.Query("SELECT count(*) FROM orders"));
        const std::string id = fmt::format("o-{}", count.Int(0, 0).value_or(0) + 1);
        KEEL_RETURN_IF_ERROR(uow.Exec("INSERT INTO orders (id, customer_id, total, status) VALUES (?, ?, ?, 'NEW')",
                                      {id, customer_id, total})
                                 .status());
        KEEL_ASSIGN_OR_RETURN(keel::OutboxMessage message,
                              Emit(uow, kOrderEvents, "Order-" + id, keel::ExpectedVersion::NoStream(), "OrderCreated",
                                   {{"order_id", id}, {"customer_id", customer_id}, {"total", total}}, customer_id));
        KEEL_RETURN_IF_ERROR(uow.Commit());
        fmt::print("    [order] placed {} for {}: total {}, status NEW, OrderCreated queued in the outbox\n", id,
                   customer_id, total);
        return message;
    }

    EventStore& store() { return *store_; }
    keel::Relay& relay() { return *relay_; }
    keel::ConsumerStats consumer_stats() const { return consumer_->stats(); }

private:
    OrderService() = default;

    // CreditReserved -> OPEN + OrderApproved; CreditLimitExceeded -> REJECTED + OrderRejected.
    Status OnCustomerEvent(UnitOfWork& uow, const Delivery& d) {
        const std::string type = Header(d.message, "type");
        if (type != "CreditReserved" && type != "CreditLimitExceeded") return Status::Ok();  // not for us
        const json e = Parse(d.message.payload);
        const std::string order_id = Str(e, "order_id");
        const bool approved = type == "CreditReserved";
        const char* status = approved ? "OPEN" : "REJECTED";
        KEEL_ASSIGN_OR_RETURN(int64_t changed, uow.Exec("UPDATE orders SET status = ? WHERE id = ? AND status = 'NEW'",
                                                        {std::string(status), order_id}));
        if (changed == 0) {  // the order state machine: only a NEW order can be decided
            fmt::print("    [order] {} for {} ignored: order is not NEW\n", type, order_id);
            return Status::Ok();
        }
        json data = {{"order_id", order_id}, {"customer_id", Str(e, "customer_id")}};
        if (!approved) data["reason"] = fmt::format("credit limit exceeded: {} available", Int(e, "available"));
        KEEL_RETURN_IF_ERROR(Emit(uow, kOrderEvents, "Order-" + order_id, keel::ExpectedVersion::Exact(0),
                                  approved ? "OrderApproved" : "OrderRejected", data, Str(e, "customer_id"))
                                 .status());
        fmt::print("    [order] {} -> {}: order {} is {}\n", type, approved ? "OrderApproved" : "OrderRejected",
                   order_id, status);
        return Status::Ok();
    }

    // Declared in this order so that they stop in the reverse one: consumer, relay, then the store.
    std::unique_ptr<EventStore> store_;
    std::unique_ptr<keel::Relay> relay_;
    std::unique_ptr<keel::Consumer> consumer_;
};

// ---- Customer service -----------------------------------------------------------------------------------------

class CustomerService {
public:
    static Result<std::unique_ptr<CustomerService>> Start(const fs::path& db, keel::Broker& broker) {
        auto service = std::unique_ptr<CustomerService>(new CustomerService());
        KEEL_ASSIGN_OR_RETURN(service->store_,
                              OpenServiceStore(db, {"CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
                                                    "credit_limit INTEGER NOT NULL, credit_reserved INTEGER NOT "
                                                    "NULL)"}));
        auto handler = [self = service.get()](UnitOfWork& uow, const Delivery& d) {
            return self->OnOrderEvent(uow, d);
        };
        KEEL_ASSIGN_OR_RETURN(service->consumer_,
                              keel::Consumer::Start(*service->store_, broker, kOrderEvents, "customer-service", handler,
                                                    ConsumerNamed("customer-service")));
        KEEL_ASSIGN_OR_RETURN(service->relay_, keel::Relay::Start(*service->store_, broker));
        return service;
    }

    Status RegisterCustomer(const std::string& id, const std::string& name, int64_t credit_limit) {
        KEEL_ASSIGN_OR_RETURN(UnitOfWork uow, UnitOfWork::Begin(*store_));
        KEEL_RETURN_IF_ERROR(
            uow.Exec("INSERT INTO customers (id, name, credit_limit, credit_reserved) VALUES (?, ?, ?, 0)",
                     {id, name, credit_limit})
                .status());
        KEEL_RETURN_IF_ERROR(Emit(uow, kCustomerEvents, "Customer-" + id, keel::ExpectedVersion::NoStream(),
                                  "CustomerCreated",
                                  {{"customer_id", id}, {"name", name}, {"credit_limit", credit_limit}}, id)
                                 .status());
        KEEL_RETURN_IF_ERROR(uow.Commit());
        fmt::print("    [customer] registered {} ({}) with a credit limit of {}\n", id, name, credit_limit);
        return Status::Ok();
    }

    EventStore& store() { return *store_; }
    keel::Relay& relay() { return *relay_; }
    keel::ConsumerStats consumer_stats() const { return consumer_->stats(); }

private:
    CustomerService() = default;

    // OrderCreated -> reserve the credit (CreditReserved) or refuse it (CreditLimitExceeded).
    Status OnOrderEvent(UnitOfWork& uow, const Delivery& d) {
        if (Header(d.message, "type") != "OrderCreated") return Status::Ok();  // not for us
        const json e = Parse(d.message.payload);
        const std::string customer_id = Str(e, "customer_id");
        const std::string order_id = Str(e, "order_id");
        const int64_t total = Int(e, "total");
        KEEL_ASSIGN_OR_RETURN(keel::Rows rows, uow.Query("SELECT credit_limit - credit_reserved FROM customers "
                                                         "WHERE id = ?",
                                                         {customer_id}));
        const int64_t available = rows.empty() ? 0 : rows.Int(0, 0).value_or(0);
        const json data = {{"order_id", order_id},
                           {"customer_id", customer_id},
                           {"amount", total},
                           {"available", total <= available ? available - total : available}};
        if (!rows.empty() && total <= available) {
            KEEL_RETURN_IF_ERROR(uow.Exec("UPDATE customers SET credit_reserved = credit_reserved + ? WHERE id = ?",
                                          {total, customer_id})
                                     .status());
            KEEL_RETURN_IF_ERROR(Emit(uow, kCustomerEvents, "Customer-" + customer_id, keel::ExpectedVersion::Any(),
                                      "CreditReserved", data, customer_id)
                                     .status());
            fmt::print("    [customer] OrderCreated {} ({} for {}): reserved, {} left -> CreditReserved\n", order_id,
                       total, customer_id, available - total);
        } else {
            KEEL_RETURN_IF_ERROR(Emit(uow, kCustomerEvents, "Customer-" + customer_id, keel::ExpectedVersion::Any(),
                                      "CreditLimitExceeded", data, customer_id)
                                     .status());
            fmt::print("    [customer] OrderCreated {} ({} for {}): only {} available -> CreditLimitExceeded\n",
                       order_id, total, customer_id, available);
        }
        return Status::Ok();
    }

    std::unique_ptr<EventStore> store_;
    std::unique_ptr<keel::Relay> relay_;
    std::unique_ptr<keel::Consumer> consumer_;
};

// ---- Customer-orders view -------------------------------------------------------------------------------------

class CustomerOrdersView {
public:
    static constexpr const char* kProjection = "customer-orders";

    static Result<std::unique_ptr<CustomerOrdersView>> Start(const fs::path& db, keel::Broker& broker) {
        auto view = std::unique_ptr<CustomerOrdersView>(new CustomerOrdersView());
        KEEL_ASSIGN_OR_RETURN(
            view->store_,
            OpenServiceStore(db, {"CREATE TABLE view_customers (customer_id TEXT PRIMARY KEY, name TEXT NOT NULL, "
                                  "credit_limit INTEGER NOT NULL, credit_reserved INTEGER NOT NULL)",
                                  "CREATE TABLE view_orders (order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, "
                                  "total INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT)"}));
        CustomerOrdersView* self = view.get();
        auto ingest = [self](UnitOfWork& uow, const Delivery& d) { return self->Ingest(uow, d); };
        KEEL_ASSIGN_OR_RETURN(view->from_orders_,
                              keel::Consumer::Start(*view->store_, broker, kOrderEvents, "customer-orders-view", ingest,
                                                    ConsumerNamed("customer-orders-view.orders")));
        KEEL_ASSIGN_OR_RETURN(view->from_customers_,
                              keel::Consumer::Start(*view->store_, broker, kCustomerEvents, "customer-orders-view",
                                                    ingest, ConsumerNamed("customer-orders-view.customers")));
        keel::ProjectionOptions options;
        options.name = kProjection;
        options.types = {"CustomerCreated", "CreditReserved", "OrderCreated", "OrderApproved", "OrderRejected"};
        options.reset = [](UnitOfWork& uow) -> Status {
            KEEL_RETURN_IF_ERROR(uow.Exec("DELETE FROM view_customers").status());
            return uow.Exec("DELETE FROM view_orders").status();
        };
        KEEL_ASSIGN_OR_RETURN(view->projection_, keel::Projection::Start(*view->store_, options, Apply));
        return view;
    }

    EventStore& store() { return *store_; }
    keel::Projection& projection() { return *projection_; }
    keel::ConsumerStats orders_stats() const { return from_orders_->stats(); }
    keel::ConsumerStats customers_stats() const { return from_customers_->stats(); }

private:
    CustomerOrdersView() = default;

    // Records a received event in the view's own store: same stream, type and event id as in the publishing
    // service's store. The inbox row written in the same unit of work makes a duplicate delivery a no-op.
    Status Ingest(UnitOfWork& uow, const Delivery& d) {
        const keel::EventData event{d.message.message_id, Header(d.message, "type"), d.message.payload, ""};
        return uow.Append(Header(d.message, "stream"), keel::ExpectedVersion::Any(), {event}).status();
    }

    // The projection: one event of the view's store applied to the read model (in the batch's unit of work).
    static Status Apply(UnitOfWork& uow, const keel::RecordedEvent& event) {
        const json e = Parse(event.data);
        if (event.type == "CustomerCreated") {
            return uow
                .Exec(
                    "INSERT INTO view_customers (customer_id, name, credit_limit, credit_reserved) VALUES (?, ?, ?, 0)",
                    {Str(e, "customer_id"), Str(e, "name"), Int(e, "credit_limit")})
                .status();
        }
        if (event.type == "CreditReserved") {
            return uow
                .Exec("UPDATE view_customers SET credit_reserved = credit_reserved + ? WHERE customer_id = ?",
                      {Int(e, "amount"), Str(e, "customer_id")})
                .status();
        }
        if (event.type == "OrderCreated") {
            return uow
                .Exec("INSERT INTO view_orders (order_id, customer_id, total, status) VALUES (?, ?, ?, 'NEW')",
                      {Str(e, "order_id"), Str(e, "customer_id"), Int(e, "total")})
                .status();
        }
        if (event.type == "OrderApproved") {
            return uow.Exec("UPDATE view_orders SET status = 'OPEN' WHERE order_id = ?", {Str(e, "order_id")}).status();
        }
        if (event.type == "OrderRejected") {
            return uow
                .Exec("UPDATE view_orders SET status = 'REJECTED', reason = ? WHERE order_id = ?",
                      {Str(e, "reason"), Str(e, "order_id")})
                .status();
        }
        return Status::Ok();
    }

    std::unique_ptr<EventStore> store_;
    std::unique_ptr<keel::Consumer> from_orders_;
    std::unique_ptr<keel::Consumer> from_customers_;
    std::unique_ptr<keel::Projection> projection_;
};

// ---- Reading the databases back -------------------------------------------------------------------------------

// The rows of a query as text, one line per row.
std::string Dump(EventStore& store, std::string_view sql) {
    auto uow = UnitOfWork::Begin(store).value();
    const keel::Rows rows = uow.Query(sql).value();
    std::string out;
    for (const auto& row : rows.rows) {
        std::string line;
        for (const keel::SqlValue& v : row) {
            if (!line.empty()) line += " | ";
            if (const auto* i = std::get_if<int64_t>(&v)) {
                line += std::to_string(*i);
            } else if (const auto* s = std::get_if<std::string>(&v)) {
                line += *s;
            } else {
                line += "NULL";
            }
        }
        out += line + "\n";
    }
    return out;
}

// What the services' own databases say, and what the view says, in the same shape.
std::string ServicesSay(OrderService& orders, CustomerService& customers) {
    return Dump(orders.store(), "SELECT id, customer_id, total, status FROM orders ORDER BY id") +
           Dump(customers.store(), "SELECT id, name, credit_limit, credit_reserved FROM customers ORDER BY id");
}
std::string ViewSays(CustomerOrdersView& view) {
    return Dump(view.store(), "SELECT order_id, customer_id, total, status FROM view_orders ORDER BY order_id") +
           Dump(view.store(),
                "SELECT customer_id, name, credit_limit, credit_reserved FROM view_customers ORDER BY customer_id");
}

// Everything a duplicate could change: the services' tables, the view, and the number of events in each store.
std::string Everything(OrderService& orders, CustomerService& customers, CustomerOrdersView& view) {
    return ServicesSay(orders, customers) + ViewSays(view) +
           fmt::format("events: order {}, customer {}, view {}\n", orders.store().HeadPosition().value(),
                       customers.store().HeadPosition().value(), view.store().HeadPosition().value());
}

std::string Indent(const std::string& text) {
    std::string out = "      ";
    for (char c : text) {
        out += c;
        if (c == '\n') out += "      ";
    }
    return out.substr(0, out.size() - 6);
}

std::vector<std::string> Types(EventStore& store, const std::string& stream) {
    std::vector<std::string> types;
    auto events = store.ReadStream(stream);
    if (!events.ok()) return types;
    for (const auto& e : *events) types.push_back(e.type);
    return types;
}

int Run(const fs::path& dir, const std::string& broker_uri) {
    Step(1, "Start the services: each its own database, outbox relay and inbox consumers; one broker between them");
    auto opened = keel::OpenBroker(broker_uri);
    if (!Check(opened.ok(), "opened the broker " + broker_uri)) {
        fmt::print("      {}\n", opened.status().ToString());
        return 1;
    }
    std::unique_ptr<keel::Broker> broker = std::move(opened).value();
    // The view starts first: a consumer group receives what is published after it was declared.
    auto view = CustomerOrdersView::Start(dir / "view.db", *broker).value();
    auto customers = CustomerService::Start(dir / "customer.db", *broker).value();
    auto orders = OrderService::Start(dir / "order.db", *broker).value();
    fmt::print("    order.db, customer.db and view.db in {}\n", dir.string());

    Step(2, "Register customers and place orders (each a local transaction: row + event + outbox message)");
    Check(customers->RegisterCustomer("ann", "Ann Lee", 100).ok(), "registered ann");
    Check(customers->RegisterCustomer("bob", "Bob Roy", 50).ok(), "registered bob");
    keel::OutboxMessage first_order = orders->PlaceOrder("ann", 60).value();
    (void)orders->PlaceOrder("ann", 50).value();
    (void)orders->PlaceOrder("ann", 30).value();
    (void)orders->PlaceOrder("bob", 80).value();

    Step(3, "Let the events flow until every order is decided and the view has caught up");
    // Every consumer group receives every message of its destination (and acknowledges those it ignores): the
    // Order service published 8 (4 OrderCreated, 4 decisions), the Customer service 6 (2 CustomerCreated, 4 answers).
    constexpr int64_t kOrderMessages = 8;
    constexpr int64_t kCustomerMessages = 6;
    const bool settled = WaitUntil([&] {
        return customers->consumer_stats().handled == kOrderMessages &&
               view->orders_stats().handled == kOrderMessages &&
               orders->consumer_stats().handled == kCustomerMessages &&
               view->customers_stats().handled == kCustomerMessages &&
               GetOutboxStats(orders->store()).value().pending == 0 &&
               GetOutboxStats(customers->store()).value().pending == 0 &&
               view->projection().position() == view->store().HeadPosition().value() &&
               ServicesSay(*orders, *customers) == ViewSays(*view);
    });
    Check(settled, "settled: every message handled by every group, both outboxes published, the view caught up");
    fmt::print("    orders (order.db):\n{}", Indent(Dump(orders->store(),
                                                         "SELECT id, customer_id, total, status "
                                                         "FROM orders ORDER BY id")));
    Check(Dump(orders->store(), "SELECT id, customer_id, total, status FROM orders ORDER BY id") ==
              "o-1 | ann | 60 | OPEN\no-2 | ann | 50 | REJECTED\no-3 | ann | 30 | OPEN\no-4 | bob | 80 | REJECTED\n",
          "o-1 OPEN, o-2 REJECTED (ann had 40 left), o-3 OPEN, o-4 REJECTED (bob's limit is 50)");
    Check(Dump(customers->store(), "SELECT id, credit_reserved FROM customers ORDER BY id") == "ann | 90\nbob | 0\n",
          "customer.db: ann has 90 of 100 reserved (o-1 + o-3), bob nothing");
    Check(Types(orders->store(), "Order-o-1") == std::vector<std::string>{"OrderCreated", "OrderApproved"},
          "order.db stream Order-o-1: OrderCreated, OrderApproved");
    Check(Types(orders->store(), "Order-o-2") == std::vector<std::string>{"OrderCreated", "OrderRejected"},
          "order.db stream Order-o-2: OrderCreated, OrderRejected");
    Check(Types(customers->store(), "Customer-ann") ==
              std::vector<std::string>{"CustomerCreated", "CreditReserved", "CreditLimitExceeded", "CreditReserved"},
          "customer.db stream Customer-ann: CustomerCreated, CreditReserved, CreditLimitExceeded, CreditReserved");
    Check(view->store().HeadPosition().value() == kOrderMessages + kCustomerMessages &&
              view->projection().position() == kOrderMessages + kCustomerMessages,
          fmt::format("view.db recorded all {} events of both services and the projection applied them (position {})",
                      kOrderMessages + kCustomerMessages, view->projection().position()));
    fmt::print("    the customer-orders view (view.db):\n{}",
               Indent(Dump(view->store(),
                           "SELECT c.name, o.order_id, o.total, o.status, ifnull(o.reason, '') FROM view_orders o "
                           "JOIN view_customers c USING (customer_id) ORDER BY c.name, o.order_id")));

    Step(4, "Inject duplicate deliveries: nothing may change");
    const std::string before = Everything(*orders, *customers, *view);
    const keel::ConsumerStats customer_before = customers->consumer_stats();
    const keel::ConsumerStats order_before = orders->consumer_stats();
    const keel::ConsumerStats view_orders_before = view->orders_stats();
    const keel::ConsumerStats view_customers_before = view->customers_stats();
    // a) Both outboxes republished from their first row: the relays publish all 14 messages again.
    const int64_t order_again = keel::RepublishOutbox(orders->store(), 1).value();
    const int64_t customer_again = keel::RepublishOutbox(customers->store(), 1).value();
    fmt::print("    republished the outboxes: {} order messages, {} customer messages\n", order_again, customer_again);
    bool skipped = WaitUntil([&] {
        return customers->consumer_stats().duplicates == customer_before.duplicates + order_again &&
               view->orders_stats().duplicates == view_orders_before.duplicates + order_again &&
               orders->consumer_stats().duplicates == order_before.duplicates + customer_again &&
               view->customers_stats().duplicates == view_customers_before.duplicates + customer_again;
    });
    Check(skipped && order_again == kOrderMessages && customer_again == kCustomerMessages,
          "every consumer's inbox recognised every republished message as a duplicate and skipped it");
    // b) One message published again by hand, as a client whose confirmation was lost would.
    keel::ThrowIfError(broker->PublishReliable(first_order, 5s));
    fmt::print("    published OrderCreated o-1 (message {}) once more\n", first_order.message_id.ToString());
    skipped = WaitUntil([&] {
        return customers->consumer_stats().duplicates == customer_before.duplicates + order_again + 1 &&
               view->orders_stats().duplicates == view_orders_before.duplicates + order_again + 1;
    });
    Check(skipped, "the Customer service and the view skipped it too (credit is not reserved twice)");
    Check(customers->consumer_stats().handled == customer_before.handled &&
              orders->consumer_stats().handled == order_before.handled &&
              view->orders_stats().handled == view_orders_before.handled &&
              view->customers_stats().handled == view_customers_before.handled,
          "no duplicate was handled");
    Check(orders->relay().Drain(30s).ok() && customers->relay().Drain(30s).ok() &&
              keel::GetOutboxStats(orders->store()).value().pending == 0 &&
              keel::GetOutboxStats(customers->store()).value().pending == 0,
          "the republished rows are marked published again");
    const std::string after = Everything(*orders, *customers, *view);
    if (!Check(after == before, "orders, customers, the view and every store's events are exactly as before")) {
        fmt::print("    before:\n{}    after:\n{}", Indent(before), Indent(after));
    }

    Step(5, "Damage the view, then rebuild it from the view's own store");
    {
        auto uow = UnitOfWork::Begin(view->store()).value();
        (void)uow.Exec("UPDATE view_orders SET status = 'LOST'").value();
        keel::ThrowIfError(uow.Commit());
    }
    keel::ThrowIfError(keel::RequestProjectionRebuild(view->store(), CustomerOrdersView::kProjection));
    Check(WaitUntil([&] { return ViewSays(*view) == ServicesSay(*orders, *customers); }),
          "the rebuilt view matches the services again, without asking them for anything");

    if (g_failed_checks > 0) {
        fmt::print("\nFAILED order_customer: {} check(s) did not hold (see the [FAILED] lines above)\n",
                   g_failed_checks);
        return 1;
    }
    fmt::print("\nok order_customer\n");
    return 0;
}

}  // namespace

int main(int argc, char** argv) try {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    fs::path dir;
    std::string broker;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--dir" && i + 1 < argc) {
            dir = argv[++i];
        } else if (arg == "--broker" && i + 1 < argc) {
            broker = argv[++i];
        } else {
            fmt::print(stderr, "usage: order_customer [--dir DIR] [--broker URI]\n");
            return 2;
        }
    }
    if (dir.empty()) {
        std::string tmpl = (fs::temp_directory_path() / "keel-order-customer-XXXXXX").string();
        if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
        dir = tmpl;
    }
    fs::create_directories(dir);
    dir = fs::absolute(dir);
    if (broker.empty()) {
        for (const char* suffix : {"", "-wal", "-shm"}) fs::remove((dir / "broker.db").string() + suffix);
        broker = "local://" + (dir / "broker.db").string();
    }
    fmt::print("order_customer: seed 001 in {} (broker {})\n", dir.string(), broker);
    return Run(dir, broker);
} catch (const std::exception& e) {
    fmt::print("\nFAILED order_customer: {}\n", e.what());
    return 1;
}
