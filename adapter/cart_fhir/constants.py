"""Canonical URLs and code-system URIs: the single place the project's base URL is spelled."""

from typing import Final

BASE: Final = "https://cart-fhir.org/fhir"


def cs(name: str) -> str:
    """URL of one of the project's own CodeSystems."""
    return f"{BASE}/CodeSystem/{name}"


def sd(name: str) -> str:
    """URL of one of the project's own StructureDefinitions (profiles)."""
    return f"{BASE}/StructureDefinition/{name}"


def ident(name: str) -> str:
    """URL of one of the project's identifier systems."""
    return f"{BASE}/identifier/{name}"


# Project terminology (output-contract.md, "Project terminology").
CS_TOXICITY: Final = cs("cart-toxicity")
CS_GRADE: Final = cs("toxicity-grade")
CS_OBSERVATION: Final = cs("cart-observation")
CS_OXYGEN: Final = cs("oxygen-delivery")
CS_CONSCIOUSNESS: Final = cs("consciousness-level")
CS_SEIZURE: Final = cs("seizure-type")
CS_MOTOR: Final = cs("motor-finding")
CS_EDEMA: Final = cs("cerebral-edema-finding")
CS_PRODUCT: Final = cs("cart-product")
# Answer lists for the CRS domain components. The contracts name the components (`hypotension`,
# `hypoxia`) but not their answers; these follow grading.md section 10.7 ("hypotension-management",
# "hypoxia-support" answers).
CS_HYPOTENSION_TIER: Final = cs("crs-hypotension-tier")
CS_OXYGEN_TIER: Final = cs("crs-oxygen-tier")
# Qualifier for a grade that the present data prove only as a minimum (grading.md decision 2, `at-least-N`).
CS_GRADE_QUALIFIER: Final = cs("grade-qualifier")
# CAR-HEMATOTOX risk group (grading.md 10.7 proposes `car-hematotox-risk`: low / high).
CS_RISK: Final = cs("car-hematotox-risk")

PROFILE_GRADE: Final = sd("cart-toxicity-grade")
PROFILE_EPISODE: Final = sd("cart-toxicity-episode")
PROFILE_AE: Final = sd("cart-adverse-event")
PROFILE_PROVENANCE: Final = sd("cart-grading-provenance")

ID_GRADE: Final = ident("grade-assessment")
ID_EPISODE: Final = ident("toxicity-episode")
ID_AE: Final = ident("adverse-event")
ID_RUN: Final = ident("grading-run")
ID_DEVICE: Final = ident("device")

# External systems (fhir-facts.md section 8.f).
LOINC: Final = "http://loinc.org"
SNOMED: Final = "http://snomed.info/sct"
RXNORM: Final = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC: Final = "http://hl7.org/fhir/sid/ndc"
CPT: Final = "http://www.ama-assn.org/go/cpt"
UCUM: Final = "http://unitsofmeasure.org"
ICD10CM: Final = "http://hl7.org/fhir/sid/icd-10-cm"
NCIT: Final = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
THO: Final = "http://terminology.hl7.org/CodeSystem"
OBS_CATEGORY: Final = f"{THO}/observation-category"
DATA_ABSENT: Final = f"{THO}/data-absent-reason"
COND_CLINICAL: Final = f"{THO}/condition-clinical"
COND_VERIFICATION: Final = f"{THO}/condition-ver-status"
COND_CATEGORY: Final = f"{THO}/condition-category"
AE_SEVERITY: Final = f"{THO}/adverse-event-severity"
AE_SERIOUSNESS: Final = f"{THO}/adverse-event-seriousness"
AE_OUTCOME: Final = f"{THO}/adverse-event-outcome"
AE_CAUSALITY_ASSESS: Final = f"{THO}/adverse-event-causality-assess"
AE_CAUSALITY_METHOD: Final = f"{THO}/adverse-event-causality-method"
V3_DATA_OPERATION: Final = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROV_PARTICIPANT: Final = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"

EXT_AE_GRADE: Final = "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/ae-grade"
EXT_SUPPORTING_INFO: Final = "http://hl7.org/fhir/StructureDefinition/workflow-supportingInfo"
EXT_RELATIVE_DATETIME: Final = "http://hl7.org/fhir/StructureDefinition/cqf-relativeDateTime"

# Checks shared by the client (remote/) and web (service/) layers: one spelling each.
FHIR_ID: Final = r"[A-Za-z0-9\-.]{1,64}"  # the R4 `id` datatype (http://hl7.org/fhir/R4/datatypes.html#id)
LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})  # the only hosts plain http:// may go to
MIN_RSA_BITS: Final = 2048  # NIST SP 800-131A; SMART servers refuse shorter RS384 keys too
