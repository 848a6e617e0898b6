// Command support_agent plays a support agent's steps against a running agentaudit sidecar, in Go.
//
// It is the Go twin of examples/support_agent.py and checks the three answers of the example policy
// (the policy `agentaudit dev` writes):
//
//  1. a looping agent that floods the CRM is stopped by its tenant's rate limit (stop, rate_limited_tenant,
//     with retry_after);
//  2. a refund of 250 needs a human approval (approval_required, with an approval_id);
//  3. a customer lookup is allowed, executed, and its result reported with ReportResult (reporting it a second
//     time is answered as a duplicate of the first report).
//
// Start the sidecar, then run the example:
//
//	agentaudit dev
//	go run ./examples/support_agent -target unix://$PWD/.agentaudit/gateway.sock
//
// Exit status: 0 when every answer is what the example policy gives, 1 when an answer differs, 2 when the
// sidecar cannot be reached or a call fails.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/local"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	agentauditv1 "github.com/agentaudit/agentaudit/clients/go/agentaudit/v1"
)

const (
	agentID  = "support-agent"
	maxFlood = 100
)

var actor = &agentauditv1.Actor{Type: agentauditv1.ActorType_ACTOR_TYPE_USER, Id: "u_1"}

// expected is what the example policy answers for one step.
type expected struct {
	decision agentauditv1.Decision
	reason   string
	layer    string
	rule     string
}

// mismatchError marks an answer that differs from the example policy's (exit status 1).
type mismatchError struct{ msg string }

func (e *mismatchError) Error() string { return e.msg }

func mismatchf(format string, args ...interface{}) error {
	return &mismatchError{fmt.Sprintf(format, args...)}
}

// run holds the fields shared by the steps of one agent run; step ids are numbered from 1.
type run struct {
	client   agentauditv1.GatewayServiceClient
	timeout  time.Duration
	runID    string
	tenantID string
	step     uint64
}

func (r *run) decide(ctx context.Context, action string, args map[string]interface{}) (*agentauditv1.DecideResponse, error) {
	st, err := structpb.NewStruct(args)
	if err != nil {
		return nil, fmt.Errorf("%s: arguments: %w", action, err)
	}
	r.step++
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	resp, err := r.client.Decide(ctx, &agentauditv1.DecideRequest{
		RunId:    r.runID,
		StepId:   r.step,
		TenantId: r.tenantID,
		Actor:    actor,
		AgentId:  agentID,
		Action:   &agentauditv1.Action{Name: action, Args: st},
	})
	if err != nil {
		return nil, fmt.Errorf("Decide %s (run %s, step %d): %w", action, r.runID, r.step, err)
	}
	return resp, nil
}

func decisionName(d agentauditv1.Decision) string {
	switch d {
	case agentauditv1.Decision_DECISION_ALLOW:
		return "allow"
	case agentauditv1.Decision_DECISION_STOP:
		return "stop"
	case agentauditv1.Decision_DECISION_APPROVAL_REQUIRED:
		return "approval_required"
	default:
		return d.String()
	}
}

func show(step string, resp *agentauditv1.DecideResponse, note string) {
	fmt.Printf("%-26s → %-17s reason=%-20s event=%s %s\n", step, decisionName(resp.GetDecision()), resp.GetReason(),
		resp.GetEventId(), note)
}

// check compares an answer with what the example policy gives.
func check(step string, resp *agentauditv1.DecideResponse, want expected) error {
	got := expected{resp.GetDecision(), resp.GetReason(), resp.GetPolicyLayer(), resp.GetPolicyRule()}
	if got != want {
		return mismatchf("%s: got decision=%s reason=%q layer=%q rule=%q, want decision=%s reason=%q layer=%q rule=%q",
			step, decisionName(got.decision), got.reason, got.layer, got.rule,
			decisionName(want.decision), want.reason, want.layer, want.rule)
	}
	if resp.GetEventId() == "" {
		return mismatchf("%s: no event_id: the decision was not journaled", step)
	}
	return nil
}

// flood plays scenario (a): an agent stuck in a loop searches the CRM until the tenant's rate limit
// (10/s, burst 20) stops it. A deny is a value, not an error.
func flood(ctx context.Context, r *run) error {
	var resp *agentauditv1.DecideResponse
	allowed := 0
	for i := 0; i < maxFlood; i++ {
		var err error
		if resp, err = r.decide(ctx, "crm.search", map[string]interface{}{"query": "ann"}); err != nil {
			return err
		}
		if resp.GetDecision() != agentauditv1.Decision_DECISION_ALLOW {
			break
		}
		allowed++
	}
	step := fmt.Sprintf("crm.search x%d (%s)", allowed+1, r.tenantID)
	retry := ""
	if ra := resp.GetRetryAfter(); ra != nil {
		retry = fmt.Sprintf("retry_after=%.3fs", ra.AsDuration().Seconds())
	}
	show(step, resp, retry)
	if err := check(step, resp, expected{agentauditv1.Decision_DECISION_STOP, "rate_limited_tenant", "limits", "crm_per_tenant"}); err != nil {
		return err
	}
	if ra := resp.GetRetryAfter(); ra == nil || ra.AsDuration() <= 0 {
		return mismatchf("%s: a rate-limit stop without a positive retry_after (%v)", step, ra)
	}
	return nil
}

// refund plays scenario (b): a refund over 100 needs a human; the agent must not execute it.
func refund(ctx context.Context, r *run) error {
	resp, err := r.decide(ctx, "refund.create", map[string]interface{}{
		"order_id": "o_1",
		"amount":   250,
		"customer": map[string]interface{}{"email": "ann@example.com"},
	})
	if err != nil {
		return err
	}
	step := fmt.Sprintf("refund.create (%s)", r.tenantID)
	show(step, resp, "approval="+resp.GetApprovalId())
	if err := check(step, resp, expected{agentauditv1.Decision_DECISION_APPROVAL_REQUIRED, "approval_required", "approval", "refunds_need_approval"}); err != nil {
		return err
	}
	if resp.GetApprovalId() == "" {
		return mismatchf("%s: approval_required without an approval_id", step)
	}
	return nil
}

// lookupCustomer stands in for the CRM call the agent makes once the sidecar allows it.
func lookupCustomer(customerID, phone string) map[string]interface{} {
	return map[string]interface{}{"customer_id": customerID, "name": "Ann", "phone": phone, "open_orders": 1}
}

// lookup plays scenario (c): a lookup is allowed, executed, and its output and duration reported.
func lookup(ctx context.Context, r *run) error {
	customerID, phone := "c_7", "+15551234567"
	resp, err := r.decide(ctx, "crm.lookup", map[string]interface{}{"customer_id": customerID, "phone": phone})
	if err != nil {
		return err
	}
	step := fmt.Sprintf("crm.lookup (%s)", r.tenantID)
	if err := check(step, resp, expected{agentauditv1.Decision_DECISION_ALLOW, "allowed", "access", "support_agent"}); err != nil {
		show(step, resp, "(unexpected)")
		return err
	}

	started := time.Now()
	output, err := structpb.NewStruct(lookupCustomer(customerID, phone))
	if err != nil {
		return fmt.Errorf("%s: output: %w", step, err)
	}
	report := &agentauditv1.ReportResultRequest{
		EventId:  resp.GetEventId(),
		Status:   agentauditv1.ResultStatus_RESULT_STATUS_SUCCEEDED,
		Output:   output,
		Duration: durationpb.New(time.Since(started)),
	}
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	first, err := r.client.ReportResult(cctx, report)
	if err != nil {
		return fmt.Errorf("ReportResult %s: %w", resp.GetEventId(), err)
	}
	show(step, resp, "reported="+first.GetEventId())
	if first.GetEventId() == "" || first.GetEventId() == resp.GetEventId() || first.GetDuplicate() {
		return mismatchf("%s: ReportResult answered event_id=%q duplicate=%v, want a new post-event",
			step, first.GetEventId(), first.GetDuplicate())
	}

	// ReportResult is idempotent per pre-event: a retried report journals nothing new.
	again, err := r.client.ReportResult(cctx, report)
	if err != nil {
		return fmt.Errorf("ReportResult %s (retry): %w", resp.GetEventId(), err)
	}
	if !again.GetDuplicate() || again.GetEventId() != first.GetEventId() {
		return mismatchf("%s: a repeated ReportResult answered event_id=%q duplicate=%v, want event_id=%q duplicate=true",
			step, again.GetEventId(), again.GetDuplicate(), first.GetEventId())
	}
	return nil
}

func newRunID() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "run_" + hex.EncodeToString(b)
}

func defaultTarget() string {
	dir, err := os.Getwd()
	if err != nil {
		dir = "."
	}
	return "unix://" + filepath.Join(dir, ".agentaudit", "gateway.sock")
}

func main() {
	target := flag.String("target", defaultTarget(), "sidecar address: unix:///abs/path.sock or 127.0.0.1:PORT")
	timeout := flag.Duration("timeout", 5*time.Second, "deadline of each call (and of connecting)")
	flag.Parse()
	os.Exit(play(*target, *timeout))
}

func play(target string, timeout time.Duration) int {
	ctx := context.Background()
	runID, floodRunID := newRunID(), newRunID()
	fmt.Printf("run %s (tenant t_42), run %s (tenant t_flood), sidecar %s\n\n", runID, floodRunID, target)

	// The sidecar is local (unix socket or loopback), so local credentials: no TLS, and a remote address is refused.
	dialCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := grpc.DialContext(dialCtx, target, grpc.WithTransportCredentials(local.NewCredentials()),
		grpc.WithBlock(), grpc.FailOnNonTempDialError(true))
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot reach the sidecar at %s (%v); is `agentaudit dev` running?\n", target, err)
		return 2
	}
	defer conn.Close()

	hctx, hcancel := context.WithTimeout(ctx, timeout)
	defer hcancel()
	health, err := healthpb.NewHealthClient(conn).Check(hctx, &healthpb.HealthCheckRequest{Service: "agentaudit.v1.GatewayService"})
	if err != nil {
		fmt.Fprintf(os.Stderr, "health check of %s failed: %v\n", target, err)
		return 2
	}
	if health.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		fmt.Fprintf(os.Stderr, "the sidecar at %s is %s, not SERVING\n", target, health.GetStatus())
		return 2
	}

	client := agentauditv1.NewGatewayServiceClient(conn)
	floodRun := &run{client: client, timeout: timeout, runID: floodRunID, tenantID: "t_flood"}
	supportRun := &run{client: client, timeout: timeout, runID: runID, tenantID: "t_42"}
	scenarios := []func() error{
		func() error { return flood(ctx, floodRun) },
		func() error { return refund(ctx, supportRun) },
		func() error { return lookup(ctx, supportRun) },
	}
	status := 0
	for _, scenario := range scenarios {
		err := scenario()
		var mismatch *mismatchError
		switch {
		case err == nil:
		case errors.As(err, &mismatch):
			fmt.Fprintf(os.Stderr, "MISMATCH %v\n", err)
			status = 1
		default:
			fmt.Fprintf(os.Stderr, "ERROR %v\n", err)
			return 2
		}
	}
	if status == 0 {
		fmt.Println("\nall answers match the example policy")
	}
	return status
}
