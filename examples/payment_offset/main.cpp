// Seed 002: offsetting a payment against a shipment, all or nothing, with in-process domain events (MediatR style).
//
//   payment_offset [--dir DIR]      (default: a new directory under /tmp)
//
// One service, one SQLite database (DIR/payment.db) opened as a keel event store: the service's own tables
// (companies, customers, shipments, payments) live beside keel's. Offsetting a payment against a shipment is one
// UnitOfWork:
//   - the Shipment aggregate deducts the amount from the shipment's due amount and from the payment's unapplied
//     amount, records a PaymentOffset event in its stream, and raises a PaymentOffset domain event;
//   - before commit the Mediator runs the handlers of the other aggregates on the same transaction: the Company
//     handler deducts the amount from the company's outstanding balance, the Customer handler from the customer's
//     — and refuses when that balance would go negative;
//   - any handler error rolls back everything: the shipment, the payment, the event, the other handler's update.
// The seed's two lost weeks were MySQL MyISAM tables silently ignoring the transaction: keel refuses storage without
// transactions instead (shown here with the `memory:` store).
//
// Exit status: 0 when every check held (the last line is then "ok payment_offset"), 1 otherwise.

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include <fmt/core.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "keel/event_store.hpp"
#include "keel/unit_of_work.hpp"

namespace {

using keel::Result;
using keel::Status;
using keel::UnitOfWork;

int g_failed_checks = 0;

bool Check(bool ok, std::string_view what) {
    fmt::print("    [{}] {}\n", ok ? "ok" : "FAILED", what);
    if (!ok) ++g_failed_checks;
    return ok;
}

void Step(int n, std::string_view title) {
    fmt::print("\n{}. {}\n", n, title);
}

// ---- The domain event and its handlers ------------------------------------------------------------------------

// Raised by the Shipment aggregate when a payment is offset against it.
struct PaymentOffset {
    std::string shipment_id;
    std::string customer_id;
    std::string payment_id;
    int64_t amount = 0;
};

// The Company aggregate: the customer's company owes less.
Status OnPaymentOffsetCompany(UnitOfWork& uow, const PaymentOffset& e) {
    auto changed = uow.Exec(
        "UPDATE companies SET outstanding = outstanding - ? WHERE id = (SELECT company_id FROM customers WHERE id = ?)",
        {e.amount, e.customer_id});
    if (!changed.ok()) return changed.status();
    fmt::print("      [company handler] company of {} owes {} less\n", e.customer_id, e.amount);
    return Status::Ok();
}

// The Customer aggregate: the customer owes less; it never owes a negative amount.
Status OnPaymentOffsetCustomer(UnitOfWork& uow, const PaymentOffset& e) {
    KEEL_ASSIGN_OR_RETURN(keel::Rows rows,
                          uow.Query("SELECT outstanding FROM customers WHERE id = ?", {e.customer_id}));
    if (rows.empty()) return Status::NotFound(fmt::format("customer {} does not exist", e.customer_id));
    KEEL_ASSIGN_OR_RETURN(int64_t outstanding, rows.Int(0, 0));
    if (outstanding - e.amount < 0) {
        fmt::print("      [customer handler] refuses: {} owes {}, an offset of {} would make it {}\n", e.customer_id,
                   outstanding, e.amount, outstanding - e.amount);
        return Status::FailedPrecondition(fmt::format("customer {}'s outstanding balance would go negative ({} - {})",
                                                      e.customer_id, outstanding, e.amount));
    }
    auto changed =
        uow.Exec("UPDATE customers SET outstanding = outstanding - ? WHERE id = ?", {e.amount, e.customer_id});
    if (!changed.ok()) return changed.status();
    fmt::print("      [customer handler] {} owes {} less\n", e.customer_id, e.amount);
    return Status::Ok();
}

// ---- The application service ----------------------------------------------------------------------------------

// Offsets `amount` of `payment_id` against `shipment_id` in one unit of work; returns the commit's status.
Status OffsetPayment(keel::EventStore& store, const keel::Mediator& mediator, const std::string& payment_id,
                     const std::string& shipment_id, int64_t amount) {
    KEEL_ASSIGN_OR_RETURN(UnitOfWork uow, UnitOfWork::Begin(store, &mediator));

    // The Shipment aggregate's own rules.
    KEEL_ASSIGN_OR_RETURN(keel::Rows shipment,
                          uow.Query("SELECT customer_id, due FROM shipments WHERE id = ?", {shipment_id}));
    if (shipment.empty()) return Status::NotFound(fmt::format("shipment {} does not exist", shipment_id));
    KEEL_ASSIGN_OR_RETURN(std::string customer_id, shipment.Text(0, 0));
    KEEL_ASSIGN_OR_RETURN(int64_t due, shipment.Int(0, 1));
    KEEL_ASSIGN_OR_RETURN(keel::Rows payment, uow.Query("SELECT unapplied FROM payments WHERE id = ?", {payment_id}));
    if (payment.empty()) return Status::NotFound(fmt::format("payment {} does not exist", payment_id));
    KEEL_ASSIGN_OR_RETURN(int64_t unapplied, payment.Int(0, 0));
    if (amount <= 0 || amount > due || amount > unapplied) {
        return Status::InvalidArgument(
            fmt::format("cannot offset {} (shipment due {}, payment unapplied {})", amount, due, unapplied));
    }

    KEEL_RETURN_IF_ERROR(uow.Exec("UPDATE shipments SET due = due - ? WHERE id = ?", {amount, shipment_id}).status());
    KEEL_RETURN_IF_ERROR(
        uow.Exec("UPDATE payments SET unapplied = unapplied - ? WHERE id = ?", {amount, payment_id}).status());
    const nlohmann::json data = {{"payment_id", payment_id}, {"customer_id", customer_id}, {"amount", amount}};
    KEEL_RETURN_IF_ERROR(uow.Append("Shipment-" + shipment_id, keel::ExpectedVersion::Any(),
                                    {keel::EventData{{}, "PaymentOffset", data.dump(), ""}})
                             .status());
    fmt::print("      [shipment] {} due {} -> {}, payment {} unapplied {} -> {}, event PaymentOffset appended\n",
               shipment_id, due, due - amount, payment_id, unapplied, unapplied - amount);
    uow.Raise(PaymentOffset{shipment_id, customer_id, payment_id, amount});
    return uow.Commit();  // runs the handlers first, on this transaction
}

// ---- Reading the database back --------------------------------------------------------------------------------

struct Balances {
    int64_t shipment_1_due = 0;
    int64_t shipment_2_due = 0;
    int64_t payment_unapplied = 0;
    int64_t customer_outstanding = 0;
    int64_t company_outstanding = 0;
    int64_t events = 0;
    friend bool operator==(const Balances&, const Balances&) = default;
};

int64_t ReadInt(UnitOfWork& uow, std::string_view sql) {
    return uow.Query(sql).value().Int(0, 0).value();
}

Balances Read(keel::EventStore& store) {
    auto uow = UnitOfWork::Begin(store).value();
    Balances b;
    b.shipment_1_due = ReadInt(uow, "SELECT due FROM shipments WHERE id = 'S-1'");
    b.shipment_2_due = ReadInt(uow, "SELECT due FROM shipments WHERE id = 'S-2'");
    b.payment_unapplied = ReadInt(uow, "SELECT unapplied FROM payments WHERE id = 'P-1'");
    b.customer_outstanding = ReadInt(uow, "SELECT outstanding FROM customers WHERE id = 'ann'");
    b.company_outstanding = ReadInt(uow, "SELECT outstanding FROM companies WHERE id = 'acme'");
    b.events = store.HeadPosition().value();
    return b;
}

void Print(const Balances& b) {
    fmt::print(
        "    shipment S-1 due {}, S-2 due {}; payment P-1 unapplied {}; customer ann owes {}; company acme owes {}; "
        "events recorded: {}\n",
        b.shipment_1_due, b.shipment_2_due, b.payment_unapplied, b.customer_outstanding, b.company_outstanding,
        b.events);
}

int Run(const std::filesystem::path& dir) {
    Step(1, "Open the service database and create its tables beside keel's");
    const std::filesystem::path db = dir / "payment.db";
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(db.string() + suffix);
    auto opened = keel::OpenStore("sqlite://" + db.string());
    if (!Check(opened.ok(), "opened sqlite://" + db.string())) {
        fmt::print("      {}\n", opened.status().ToString());
        return 1;
    }
    std::unique_ptr<keel::EventStore> store = std::move(opened).value();
    {
        auto uow = UnitOfWork::Begin(*store).value();
        for (const char* sql : {
                 "CREATE TABLE companies (id TEXT PRIMARY KEY, outstanding INTEGER NOT NULL)",
                 "CREATE TABLE customers (id TEXT PRIMARY KEY, company_id TEXT NOT NULL, outstanding INTEGER NOT NULL)",
                 "CREATE TABLE shipments (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, due INTEGER NOT NULL)",
                 "CREATE TABLE payments (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, unapplied INTEGER NOT NULL)",
                 // A credit note of 60 was already applied to ann's balance: she owes 120 while her shipments
                 // still show 100 + 80 due. Offsetting both in full would make her balance negative.
                 "INSERT INTO companies VALUES ('acme', 500)",
                 "INSERT INTO customers VALUES ('ann', 'acme', 120)",
                 "INSERT INTO shipments VALUES ('S-1', 'ann', 100), ('S-2', 'ann', 80)",
                 "INSERT INTO payments VALUES ('P-1', 'ann', 200)",
             }) {
            uow.Exec(sql).value();
        }
        keel::ThrowIfError(uow.Commit());
    }
    const Balances initial = Read(*store);
    Print(initial);

    keel::Mediator mediator;
    mediator.On<PaymentOffset>(OnPaymentOffsetCompany);   // runs first …
    mediator.On<PaymentOffset>(OnPaymentOffsetCustomer);  // … then this one, which may refuse

    Step(2, "Offset 100 of payment P-1 against shipment S-1 (the customer handler accepts)");
    Status s = OffsetPayment(*store, mediator, "P-1", "S-1", 100);
    Check(s.ok(), fmt::format("the unit of work committed ({})", s.ToString()));
    const Balances after_first = Read(*store);
    Print(after_first);
    Check(after_first.shipment_1_due == 0, "shipment S-1 is fully paid (due 100 -> 0)");
    Check(after_first.payment_unapplied == 100, "payment P-1 has 100 left to apply");
    Check(after_first.customer_outstanding == 20, "customer ann owes 20 (120 - 100), updated by her handler");
    Check(after_first.company_outstanding == 400, "company acme owes 400 (500 - 100), updated by its handler");
    Check(after_first.events == initial.events + 1, "one PaymentOffset event was recorded in stream Shipment-S-1");

    Step(3, "Offset 80 against shipment S-2 (the customer handler refuses: ann would owe -60)");
    s = OffsetPayment(*store, mediator, "P-1", "S-2", 80);
    Check(s.code() == keel::StatusCode::kFailedPrecondition,
          fmt::format("the commit returned the handler's error: {}", s.ToString()));
    const Balances after_second = Read(*store);
    Print(after_second);
    Check(after_second.shipment_2_due == 80, "shipment S-2 is untouched (still due 80)");
    Check(after_second.customer_outstanding == 20, "customer ann is untouched (still owes 20)");
    Check(after_second.company_outstanding == 400,
          "company acme is untouched: its handler had run, and was rolled back with the rest");
    Check(after_second == after_first, "nothing at all changed: shipment, payment, balances and events as before");
    auto stream = store->ReadStream("Shipment-S-2");
    Check(stream.status().code() == keel::StatusCode::kNotFound, "no event was recorded for shipment S-2");

    Step(4, "Storage without transactions is refused (seed 002 lost two weeks to MyISAM ignoring transactions)");
    auto memory = keel::OpenStore("memory:").value();
    auto refused = UnitOfWork::Begin(*memory);
    Check(refused.status().code() == keel::StatusCode::kNotSupported,
          fmt::format("UnitOfWork::Begin on memory: -> {}", refused.status().ToString()));

    if (g_failed_checks > 0) {
        fmt::print("\nFAILED payment_offset: {} check(s) did not hold (see the [FAILED] lines above)\n",
                   g_failed_checks);
        return 1;
    }
    fmt::print("\nok payment_offset\n");
    return 0;
}

}  // namespace

int main(int argc, char** argv) try {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::filesystem::path dir;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--dir" && i + 1 < argc) {
            dir = argv[++i];
        } else {
            fmt::print(stderr, "usage: payment_offset [--dir DIR]\n");
            return 2;
        }
    }
    if (dir.empty()) {
        std::string tmpl = (std::filesystem::temp_directory_path() / "keel-payment-offset-XXXXXX").string();
        if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
        dir = tmpl;
    }
    std::filesystem::create_directories(dir);
    dir = std::filesystem::absolute(dir);
    fmt::print("payment_offset: seed 002 in {}\n", dir.string());
    return Run(dir);
} catch (const std::exception& e) {
    fmt::print("\nFAILED payment_offset: {}\n", e.what());
    return 1;
}
