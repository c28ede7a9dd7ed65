// Profiles of the output contract (output-contract.md sections 1-4; adapter/output/resources.py).
// They constrain what the contract and the writer fix; every golden output resource must conform.

Extension: AeGrade
Id: ae-grade
Title: "AdverseEvent grade"
Description: "Local stand-in for the AE research backport IG extension ae-grade (not in R4 core and not on any reachable registry), published under that IG's own url so that resources keep the url the contract names (output-contract.md section 3)."
* ^url = $ae-grade
* ^status = #draft
* ^context[0].type = #element
* ^context[0].expression = "AdverseEvent"
* value[x] only CodeableConcept
* valueCodeableConcept 1..1
* valueCodeableConcept.coding ^slicing.discriminator.type = #value
* valueCodeableConcept.coding ^slicing.discriminator.path = "system"
* valueCodeableConcept.coding ^slicing.rules = #open
* valueCodeableConcept.coding contains grade 1..1
* valueCodeableConcept.coding[grade].system 1..1
* valueCodeableConcept.coding[grade].system = Canonical(ToxicityGrade)
* valueCodeableConcept.coding[grade] from ToxicityGradeVS (required)

RuleSet: BusinessIdentifier(system)
* identifier 1..1
* identifier.system 1..1
* identifier.system = "{system}"
* identifier.value 1..1

RuleSet: LocalCoding(path, valueset)
* {path}.coding ^slicing.discriminator.type = #value
* {path}.coding ^slicing.discriminator.path = "system"
* {path}.coding ^slicing.rules = #open
* {path}.coding contains local 1..1
* {path}.coding[local].system 1..1
* {path}.coding[local].system = "https://cart-fhir.org/fhir/CodeSystem/cart-toxicity"
* {path}.coding[local].code 1..1
* {path}.coding[local] from {valueset} (required)

Profile: CartToxicityGrade
Parent: Observation
Id: cart-toxicity-grade
Title: "CAR-T toxicity grade"
Description: "A daily CRS/ICANS grade, or an assessment beyond them (ICAHT, CAR-HEMATOTOX, IEC-HS, CTCAE infection or neurological event grade, treatment-response summary), computed by cart-fhir (output-contract.md section 1). One profile covers both: the writer puts this profile on both, and they differ only in what the base allows (effectiveDateTime, focus, no value for a summary carried by its components)."
* ^status = #draft
* meta.profile 1..*
* insert BusinessIdentifier(https://cart-fhir.org/fhir/identifier/grade-assessment)
* status = #preliminary
* category ^slicing.discriminator.type = #pattern
* category ^slicing.discriminator.path = "$this"
* category ^slicing.rules = #open
* category contains survey 1..1
* category[survey] = $obs-category#survey
* code from ToxicityAssessment (required)
* insert LocalCoding(code, ToxicityAssessment)
* subject 1..1
* subject only Reference(Patient)
* focus only Reference(Condition)
* effective[x] 1..1
* effective[x] only Period or dateTime
* value[x] only integer
* interpretation from GradeInterpretation (required)
* method 1..1
* method = CartToxicity#automated-grading
* device 1..1
* device only Reference(Device)
* derivedFrom only Reference(Observation)
* extension contains $supporting-info named supportingInfo 0..*
* component.code from ToxicityComponent (required)
* insert LocalCoding(component.code, ToxicityComponent)
* component.value[x] only Quantity or CodeableConcept or integer or boolean
* component.valueCodeableConcept from ComponentAnswer (required)
* obeys cart-grade-value

Invariant: cart-grade-value
Description: "A grade or score has a value, or says why not (dataAbsentReason), or is a summary carried by its components (output-contract.md section 1: never a silent grade 0)."
Expression: "value.exists() or dataAbsentReason.exists() or component.exists()"
Severity: #error

Profile: CartToxicityEpisode
Parent: Condition
Id: cart-toxicity-episode
Title: "CAR-T toxicity episode"
Description: "One contiguous toxicity episode (output-contract.md section 2)."
* ^status = #draft
* meta.profile 1..*
* insert BusinessIdentifier(https://cart-fhir.org/fhir/identifier/toxicity-episode)
* clinicalStatus 1..1
* verificationStatus 1..1
* verificationStatus = $cond-ver#provisional
* category ^slicing.discriminator.type = #pattern
* category ^slicing.discriminator.path = "$this"
* category ^slicing.rules = #open
* category contains encounterDiagnosis 1..1
* category[encounterDiagnosis] = $cond-category#encounter-diagnosis
* code 1..1
* insert LocalCoding(code, ToxicityType)
* subject only Reference(Patient)
* onset[x] 1..1
* onset[x] only dateTime
* abatement[x] only dateTime
* stage 0..1
* stage.summary 1..1
* stage.summary.coding ^slicing.discriminator.type = #value
* stage.summary.coding ^slicing.discriminator.path = "system"
* stage.summary.coding ^slicing.rules = #open
* stage.summary.coding contains grade 1..1
* stage.summary.coding[grade].system 1..1
* stage.summary.coding[grade].system = Canonical(ToxicityGrade)
* stage.summary.coding[grade] from ToxicityGradeVS (required)
* stage.type 1..1
* insert LocalCoding(stage.type, ToxicityAssessment)
* stage.assessment only Reference(Observation)
* evidence.detail only Reference(Observation)

Profile: CartAdverseEvent
Parent: AdverseEvent
Id: cart-adverse-event
Title: "CAR-T adverse event"
Description: "The AdverseEvent of one toxicity episode or event (output-contract.md section 3)."
* ^status = #draft
* meta.profile 1..*
* insert BusinessIdentifier(https://cart-fhir.org/fhir/identifier/adverse-event)
* extension contains AeGrade named grade 0..1
* actuality = #actual
* event 1..1
* insert LocalCoding(event, ToxicityType)
* subject only Reference(Patient)
* date 1..1
* recordedDate 1..1
* resultingCondition 1..*
* resultingCondition only Reference(Condition)
* seriousness from $vs-ae-seriousness (required)
* outcome 1..1
* contributor 1..*
* contributor only Reference(Device)
* suspectEntity 1..*
* suspectEntity.instance only Reference(MedicationAdministration or Procedure)
* suspectEntity.causality.assessment from $vs-ae-causality-assess (required)
* suspectEntity.causality.method from $vs-ae-causality-method (required)

Profile: CartGradingProvenance
Parent: Provenance
Id: cart-grading-provenance
Title: "CAR-T grading run provenance"
Description: "One grading run for one patient (output-contract.md section 4). R4 Provenance has no identifier: the run key is a meta.tag in the grading-run identifier system."
* ^status = #draft
* meta.profile 1..*
* meta.tag ^slicing.discriminator.type = #value
* meta.tag ^slicing.discriminator.path = "system"
* meta.tag ^slicing.rules = #open
* meta.tag contains run 1..1
* meta.tag[run].system 1..1
* meta.tag[run].system = "https://cart-fhir.org/fhir/identifier/grading-run"
* meta.tag[run].code 1..1
* target only Reference(Observation or Condition or AdverseEvent)
* activity 1..1
* activity from GradingActivity (required)
* agent.type 1..1
* agent.type = $prov-participant#assembler
* agent.who only Reference(Device)
* entity.role = #source
